"""The model report (GET /v1/admin/models/report): how users judged each model id.

History counts (GetModelReport: answers, ratings and flags per model id, comparison outcomes
per pair of model ids); the statistics are model_stats.py's. Not in it: the reward model's
mean score of each model's answers, because no score of a served answer is stored anywhere
(best-of-n scores its candidates but history keeps none of them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from parlance.gateway import errors, model_stats
from parlance.gateway.clients import HistoryClient
from parlance.gateway.model_stats import Comparison
from parlance.history.v1 import history_pb2

BOOTSTRAP_REPLICATES = 200
BOOTSTRAP_SEED = 0

METHOD = {
    "thumbs_up_rate_ci95": "Wilson score interval, 95%",
    "strength": (
        "Bradley-Terry log-strength (mean 0 over the compared models; a difference d means "
        "the first is preferred with probability 1/(1+e^-d)), MM fit with 0.5 pseudo-wins "
        "each way per compared pair; self-comparisons left out"
    ),
    "strength_ci95": (
        f"percentile bootstrap, {BOOTSTRAP_REPLICATES} multinomial resamples of the "
        f"comparisons, seed {BOOTSTRAP_SEED}"
    ),
    "flag_rate": "answers output moderation flagged / answers",
}


def parse_instant(value: str, param: str) -> Timestamp:
    """Unix seconds or ISO 8601 (naive means UTC): the admin report's and export's `since` and
    `until`. A time that is valid but cannot be moved to UTC (0001-01-01T00:00+01:00, the last
    hours of 9999 west of UTC) overflows in FromDatetime: that is a 400 too."""
    try:
        when = (
            datetime.fromtimestamp(float(value), UTC)
            if value.replace(".", "", 1).isdigit()
            else datetime.fromisoformat(value.replace("Z", "+00:00"))
        )
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ts = Timestamp()
        ts.FromDatetime(when)
    except (ValueError, OverflowError, OSError) as exc:
        raise errors.invalid_request(
            f"Invalid value for '{param}': expected Unix seconds or an ISO 8601 time "
            "between years 1 and 9999 (UTC).",
            param,
        ) from exc
    return ts


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return [interval[0], interval[1]] if interval is not None else None


def model_entry(
    row: Any, won_lost: tuple[int, int], strength: model_stats.Strength | None
) -> dict[str, Any]:
    """One model's line of the report, from its ModelReportRow."""
    rated = int(row.rated_answers)
    return {
        "model": row.model,
        "answers": int(row.answers),
        "rated_answers": rated,
        "thumbs_up": int(row.thumbs_up),
        "thumbs_down": int(row.thumbs_down),
        "thumbs_up_rate": _rate(int(row.thumbs_up), rated),
        "thumbs_up_rate_ci95": _pair(model_stats.wilson_interval(int(row.thumbs_up), rated)),
        "flagged_answers": int(row.flagged_answers),
        "flag_rate": _rate(int(row.flagged_answers), int(row.answers)),
        "comparisons_won": won_lost[0],
        "comparisons_lost": won_lost[1],
        "strength": strength.strength if strength else None,
        "strength_ci95": [strength.low, strength.high] if strength else None,
    }


def report_json(
    reply: Any, parents: dict[str, str], query: dict[str, str | None]
) -> dict[str, Any]:
    """The report's JSON from a GetModelReportResponse; `parents`: adapter id → parent."""
    comparisons = [
        Comparison(c.chosen_model, c.rejected_model, int(c.count)) for c in reply.comparisons
    ]
    won_lost = model_stats.win_loss(comparisons)
    strengths = model_stats.bradley_terry_bootstrap(
        comparisons, replicates=BOOTSTRAP_REPLICATES, seed=BOOTSTRAP_SEED
    )
    rows = {row.model: row for row in reply.models}
    # A model that was only ever compared (its answers outside the window) gets a line too.
    for model in won_lost:
        rows.setdefault(model, history_pb2.ModelReportRow(model=model))
    data = []
    for model in sorted(rows):
        entry = model_entry(rows[model], won_lost.get(model, (0, 0)), strengths.get(model))
        entry["parent"] = parents.get(model)
        data.append(entry)
    return {
        "object": "model_report",
        **query,
        "data": data,
        "comparisons": [
            {"chosen_model": c.winner, "rejected_model": c.loser, "count": c.count}
            for c in comparisons
        ],
        "method": METHOD,
    }


async def fetch_report(
    history: HistoryClient, since: str | None, until: str | None, intent: str | None
) -> Any:
    request = history_pb2.GetModelReportRequest(intent=intent or "")
    if since:
        request.since.CopyFrom(parse_instant(since, "since"))
    if until:
        request.until.CopyFrom(parse_instant(until, "until"))
    return await history.get_model_report(request)
