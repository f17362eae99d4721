"""Moderation verdicts as history stores them (`moderation_json`), and the checks that keep
unmoderated text out of the training export.

A stored verdict is a JSON object keyed by what was classified, each value one verdict:

    {"input": {"flagged": false, "categories": {"harassment": 0.01, ...},
               "flagged_categories": [], "model": "detoxify-original"}}

Keys: "input" (a user or system message, classified before generation), "output" (a generated
answer: flagged when any of its windows was, each category's highest score), "comment" and
"corrected_content" (feedback text, classified on submission). History's export treats a
message whose verdict holds `"flagged": true` anywhere as flagged (history/export.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from parlance.gateway.clients import SafetyClient
from parlance.safety.v1 import safety_pb2

# Texts per Classify call (safety's own bound is max_texts_per_call, 256 by default).
_CHUNK = 64


def verdict(results: Iterable[safety_pb2.Classification], model: str) -> dict[str, Any]:
    """One verdict over one or more classifications of the same text (an answer's windows):
    flagged when any is, each category's highest score."""
    flagged = False
    scores: dict[str, float] = {}
    flagged_categories: set[str] = set()
    for result in results:
        flagged = flagged or result.flagged
        for category in result.categories:
            scores[category.category] = max(scores.get(category.category, 0.0), category.score)
            if category.flagged:
                flagged_categories.add(category.category)
    return {
        "flagged": flagged,
        "categories": {name: round(score, 6) for name, score in sorted(scores.items())},
        "flagged_categories": sorted(flagged_categories),
        "model": model,
    }


def to_json(**verdicts: dict[str, Any]) -> str:
    """The moderation_json of a message or a feedback: its verdicts by key."""
    return json.dumps(verdicts, separators=(",", ":"), sort_keys=True)


def verdict_json(key: str, results: Sequence[safety_pb2.Classification], model: str) -> str:
    """A message's moderation_json with its one verdict: key "input" (a message of the
    request) or "output" (an answer, over its windows). "" when nothing was classified."""
    return to_json(**{key: verdict(results, model)}) if results else ""


async def classify(
    safety: SafetyClient, texts: Sequence[str], direction: safety_pb2.Direction
) -> list[safety_pb2.Classification]:
    """Each text's classification, in order (in chunks; safety down raises its 503)."""
    out: list[safety_pb2.Classification] = []
    for start in range(0, len(texts), _CHUNK):
        response = await safety.classify(list(texts[start : start + _CHUNK]), direction)
        out.extend(response.results)
    return out


async def feedback_verdicts(safety: SafetyClient, comment: str, corrected_content: str) -> str:
    """The moderation_json of a feedback: its comment classified as input, its correction as
    output (it is meant to become a chosen answer). "" when there is no text to classify."""
    found: dict[str, dict[str, Any]] = {}
    for key, text, direction in (
        ("comment", comment, safety_pb2.DIRECTION_INPUT),
        ("corrected_content", corrected_content, safety_pb2.DIRECTION_OUTPUT),
    ):
        if text.strip():
            response = await safety.classify([text], direction)
            found[key] = verdict(response.results, response.model)
    return to_json(**found) if found else ""


def _record_texts(record: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(role, content) of every turn of a training record (SFT, preference, or an implicit
    weak negative's completion)."""
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        for turn in record.get(key) or ():
            if isinstance(turn, dict):
                yield str(turn.get("role", "")), str(turn.get("content", ""))


def _direction(role: str) -> safety_pb2.Direction:
    return safety_pb2.DIRECTION_OUTPUT if role == "assistant" else safety_pb2.DIRECTION_INPUT


async def recheck_records(safety: SafetyClient, lines: Sequence[str]) -> list[str]:
    """The export's records (JSON lines) whose every text passes safety now: stored verdicts
    may be missing (older rows), made with older thresholds or by another classifier, so each
    record is classified again at export time, assistant turns as output, the rest as input.
    Safety down raises (fail closed: nothing unchecked is exported)."""
    records = [json.loads(line) for line in lines]
    wanted: dict[tuple[safety_pb2.Direction, str], None] = {}
    for record in records:
        for role, content in _record_texts(record):
            if content.strip():
                wanted[(_direction(role), content)] = None
    flagged: set[tuple[safety_pb2.Direction, str]] = set()
    for direction in (safety_pb2.DIRECTION_INPUT, safety_pb2.DIRECTION_OUTPUT):
        texts = [text for d, text in wanted if d == direction]
        results = await classify(safety, texts, direction)
        flagged.update((direction, t) for t, r in zip(texts, results, strict=True) if r.flagged)
    return [
        line
        for line, record in zip(lines, records, strict=True)
        if not any((_direction(role), text) in flagged for role, text in _record_texts(record))
    ]
