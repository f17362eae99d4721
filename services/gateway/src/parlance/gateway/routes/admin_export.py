"""GET /v1/admin/export: the users' feedback as training data (JSONL, streamed), cut by kind,
time window, model and intent; implicit feedback (weak negatives) only when asked. Each
record is classified again through safety before it leaves (training data is the product's
next model). Included by routes/conversations.py's router."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from parlance.gateway import conversations_protocol as cp
from parlance.gateway import errors, verdicts
from parlance.gateway.deps import Admin, State
from parlance.gateway.model_report import parse_instant
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)

router = APIRouter()

_KINDS = {
    "all": history_pb2.EXPORT_KIND_UNSPECIFIED,
    "sft": history_pb2.EXPORT_KIND_SFT,
    "preference": history_pb2.EXPORT_KIND_PREFERENCE,
}


def intent_filter(value: str) -> str:
    """The `intent` query parameter, checked (400 naming the rule) before history sees it."""
    try:
        return cp.valid_intent(value)
    except ValueError as exc:
        raise errors.invalid_request(f"Invalid value for 'intent': {exc}.", "intent") from exc


@router.get(
    "/v1/admin/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON record per line (JSONL), streamed.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def export_training_data(
    _: Admin,
    state: State,
    kind: Literal["all", "sft", "preference"] = "all",
    since: Annotated[str | None, Query(max_length=64)] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str, Query(max_length=256)] = "",
    intent: Annotated[str, Query(max_length=64)] = "",
    include_implicit: bool = False,
) -> StreamingResponse:
    request = history_pb2.ExportTrainingDataRequest(
        kind=_KINDS[kind],
        model=model,
        intent=intent_filter(intent),
        include_implicit=include_implicit,
    )
    if since:
        request.since.CopyFrom(parse_instant(since, "since"))
    if until:
        request.until.CopyFrom(parse_instant(until, "until"))
    stream = state.history.export_training_data(request, state.settings.history_export_timeout_s)
    # The first batch is awaited here: history down or a bad request is still an HTTP error,
    # not a 200 with a broken body.
    try:
        first: history_pb2.ExportTrainingDataResponse | None = await anext(stream)
    except StopAsyncIteration:
        first = None

    # Each record is classified again before it leaves (verdicts.recheck_records); the first
    # batch here too, so that safety down is a 503, not a 200 with a broken body.
    try:
        first_lines = await verdicts.recheck_records(state.safety, first.records) if first else []
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield "".join(line + "\n" for line in first_lines).encode()
            async for batch in stream:
                lines = await verdicts.recheck_records(state.safety, batch.records)
                yield "".join(line + "\n" for line in lines).encode()
        except errors.APIError as exc:
            # Headers are sent: the stream ends short; the log says why.
            log.error("training-data export ended early: %s", exc.message)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(
        body(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="parlance-{kind}.jsonl"'},
    )
