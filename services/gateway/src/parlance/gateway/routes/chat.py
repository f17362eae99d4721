"""POST /v1/chat/completions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from parlance.gateway import errors
from parlance.gateway.deps import LimitedCaller, State
from parlance.gateway.metrics import IN_FLIGHT
from parlance.gateway.protocol import ChatCompletionRequest
from parlance.gateway.serving import render_completion

log = logging.getLogger(__name__)

router = APIRouter()

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, caller: LimitedCaller, state: State
) -> Response:
    if body.model_extra:
        log.info("ignoring unknown request fields", extra={"fields": sorted(body.model_extra)})
    settings = state.settings
    headers: dict[str, str] = dict(getattr(request.state, "response_headers", {}))
    if state.slots.locked():
        raise errors.service_unavailable(
            "The server is at its concurrency limit; retry shortly.", settings.retry_after_s
        )
    await state.slots.acquire()
    IN_FLIGHT.inc()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            state.slots.release()
            IN_FLIGHT.dec()

    try:
        return await _serve(body, request, state, headers, release)
    except BaseException:
        release()
        raise


async def _serve(
    body: ChatCompletionRequest, request: Request, state: State, headers: dict[str, str], release
) -> Response:
    chat = state.chat
    prepared = await chat.prepare(body, request.state.principal)
    bypass = "no-cache" in request.headers.get("cache-control", "").lower()
    if prepared.cache_key and not bypass:
        record = await state.cache.get(prepared.cache_key)
        if record is not None:
            headers["x-cache"] = "hit"
            if body.stream:
                return StreamingResponse(
                    _released(chat.replay(prepared, record), release),
                    media_type="text/event-stream",
                    headers={**headers, **SSE_HEADERS},
                )
            await chat.store_exchange(prepared, record)
            release()
            return JSONResponse(render_completion(prepared, record), headers=headers)
        headers["x-cache"] = "miss"
    else:
        headers["x-cache"] = "bypass"
    await chat.moderate_input(prepared)
    if body.stream:
        stream = await chat.open_stream(prepared)
        return StreamingResponse(
            _released(chat.stream(prepared, stream), release),
            media_type="text/event-stream",
            headers={**headers, **SSE_HEADERS},
        )
    result = await chat.complete(prepared)
    release()
    return JSONResponse(result, headers=headers)


async def _released(events: AsyncIterator[bytes], release) -> AsyncIterator[bytes]:
    """Releases the request's slot when the stream ends, fails or the client goes away."""
    try:
        async for event in events:
            yield event
    finally:
        release()
