"""POST /v1/chat/completions: admission (auth, rate limits, validation, TPM, concurrency) as
dependencies, then the flow of chat/serving.py, then the answer as JSON or as SSE."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from parlance.common import tracing
from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.chat.limits import RequestLimits, estimate_tokens, generations
from parlance.gateway.chat.prepare import ModerationTask
from parlance.gateway.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
)
from parlance.gateway.chat.render import dump
from parlance.gateway.chat.timing import ServerTiming
from parlance.gateway.chat.validation import max_tokens_limit
from parlance.gateway.deps import LimitedCaller, State, tokens_headers
from parlance.gateway.headers import ResponseHeaders, response_headers
from parlance.gateway.intents import SERVER_TIMING_STAGE
from parlance.gateway.metrics import IN_FLIGHT
from parlance.gateway.redis_state import RedisUnavailable

log = logging.getLogger(__name__)

router = APIRouter()

# The intent route a request took (with intent routing on).
INTENT_HEADER = "x-parlance-intent"
# The categories a request was answered with care for (moderation.judge_input).
CARE_HEADER = "x-parlance-care"

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

Headers = Annotated[ResponseHeaders, Depends(response_headers)]


class Admission:
    """An admitted request: its limits, its slot in this process, its timing. `release()`
    gives back the slot and settles the limits, once."""

    def __init__(
        self,
        body: ChatCompletionRequest,
        caller: Principal,
        limits: RequestLimits,
        slots: asyncio.Semaphore,
        timing: ServerTiming,
        checking: ModerationTask | None = None,
    ) -> None:
        self.body = body
        self.caller = caller
        self.limits = limits
        self.slots = slots
        self.timing = timing
        # Input moderation, started once the limits were taken (Preparer.start_moderation).
        self.checking = checking
        # A stream releases when it ends (the response outlives the route).
        self.streaming = False
        self._released = False
        # Work kept off the way to the first token: run once a stream has sent this many events.
        self._after: tuple[int, Callable[[], None]] | None = None

    def after_events(self, count: int, hook: Callable[[], None]) -> None:
        """Runs `hook` once a stream has sent `count` events (not at all if it ends before)."""
        self._after = (count, hook)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.slots.release()
            IN_FLIGHT.dec()
            self.limits.settle()

    def released(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`events`, then release: when the stream ends, fails or the client goes away."""
        self.streaming = True
        return self._release_after(events)

    async def _release_after(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for event in events:
                yield event
                sent += 1
                if self._after is not None and sent >= self._after[0]:
                    hook, self._after = self._after[1], None
                    hook()
        finally:
            self.release()


async def admit(
    body: ChatCompletionRequest,
    request: Request,
    caller: LimitedCaller,
    state: State,
    headers: Headers,
) -> AsyncIterator[Admission]:
    """Validates the request, then reserves its tokens, takes a concurrency lease and a slot
    of this process. Errors from here on carry the -tokens headers."""
    if body.model_extra:
        log.info("ignoring unknown request fields", extra={"fields": sorted(body.model_extra)})
    settings = state.settings
    timing = ServerTiming(getattr(request.state, "started", time.perf_counter()))
    timing.mark("auth")
    if state.slots.locked():
        raise errors.service_unavailable(
            "The server is at its concurrency limit; retry shortly.", settings.retry_after_s
        )
    # Validation first: a request refused as invalid reserves nothing.
    try:
        state.chat.validate(body, caller)
    except errors.APIError:
        headers.update(await tokens_headers(state, caller))
        raise
    limits = RequestLimits(
        settings,
        state.limiter,
        state.leases,
        state.chat.background,
        caller,
        estimate_tokens(body, settings.tpm_completion_estimate, max_tokens_limit(caller, settings)),
        weight=generations(body),
    )
    try:
        await limits.take(headers)
    except RedisUnavailable:
        raise errors.service_unavailable(
            "Rate limiting is unavailable (Redis); retry shortly.", settings.retry_after_s
        ) from None
    timing.mark("limits")
    # Input moderation runs from here, beside the slot wait, the context and intent routing:
    # its round trip to safety was the longest wait before the generator
    # (bench/results/ttft_c1.md). Not before the limits: a request they refuse must cost
    # safety nothing. Awaited before the generator is called; a request refused meanwhile
    # cancels it.
    cacheable = settings.cache_enabled and body.is_deterministic() and use_cache(request)
    checking = state.chat.preparer.start_moderation(body, cacheable)
    try:
        try:
            await state.slots.acquire()
        except BaseException:  # cancelled while it waited (client gone): the limits go back
            limits.settle()
            raise
        IN_FLIGHT.inc()
        admission = Admission(body, caller, limits, state.slots, timing, checking)
        try:
            yield admission
        finally:
            # Whatever the route did not hand to a stream (an error, a cancelled request).
            if not admission.streaming:
                admission.release()
    finally:
        # A moderation the route did not await (a refusal, an error): stopped. Once awaited,
        # the task is done and this does nothing.
        if checking is not None:
            checking.cancel()


def use_cache(request: Request) -> bool:
    """Whether the client lets the cache answer (no `Cache-Control: no-cache`)."""
    return "no-cache" not in request.headers.get("cache-control", "").lower()


Admitted = Annotated[Admission, Depends(admit)]

# The schema of a stream's events (added to the document's components by document_stream).
_CHUNK_REF = "#/components/schemas/ChatCompletionChunk"
# One server-sent event as OpenAPI 3.2 describes a stream's items (and schemathesis checks
# them): its `data` is JSON, a ChatCompletionChunk, until the final `[DONE]`.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {
            "anyOf": [
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": _CHUNK_REF},
                },
                {"const": "[DONE]"},
            ]
        },
    },
    "required": ["data"],
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {
            "description": "The completion (JSON), or with `stream: true` its server-sent "
            "events: each `data:` a ChatCompletionChunk, then `data: [DONE]`.",
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        }
    },
)
@tracing.traced("POST /v1/chat/completions")
async def create_chat_completion(
    admitted: Admitted, state: State, headers: Headers, request: Request
) -> Response:
    prepared = await state.chat.prepare(admitted.body, admitted.caller, admitted.checking)
    admitted.limits.prepared = prepared
    intents = state.chat.preparer.intents
    if prepared.intent is not None and intents is not None:
        # The TPM reservation was estimated before routing; the route may have set max_tokens
        # and added a system prompt.
        settings = state.settings
        estimate = estimate_tokens(
            prepared.request,
            settings.tpm_completion_estimate,
            max_tokens_limit(admitted.caller, settings),
        )
        routed = intents.routed_estimate(prepared, estimate)

        def reestimate() -> None:
            state.chat.background.spawn(admitted.limits.reestimate(routed))

        if admitted.body.stream:
            # After the role chunks and the first content chunk: its Redis call, run beside
            # the first token, added about 3 ms to it at load 10 (bench/results/intent_ttft.md).
            admitted.after_events(prepared.n + 1, reestimate)
        else:
            reestimate()
    admitted.timing.mark("context")
    if prepared.intent is not None:
        headers[INTENT_HEADER] = prepared.intent.name
        admitted.timing.add(SERVER_TIMING_STAGE, prepared.intent.duration_s)
    answer = await state.chat.respond(prepared, headers, admitted.timing, use_cache(request))
    if prepared.care:
        headers[CARE_HEADER] = ",".join(prepared.care)
    if isinstance(answer, ChatCompletion):
        admitted.release()
        return Response(dump(answer), media_type="application/json", headers=headers)
    return StreamingResponse(
        admitted.released(answer),
        media_type="text/event-stream",
        headers={**headers, **SSE_HEADERS},
    )


def document_stream(app: FastAPI) -> None:
    """Puts ChatCompletionChunk (the schema of a stream's events) in the OpenAPI document's
    components, where the route's text/event-stream response refers to it."""
    produce = app.openapi

    def openapi() -> dict[str, Any]:
        schema = produce()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ChatCompletionChunk" not in components:
            chunk = ChatCompletionChunk.model_json_schema(
                ref_template="#/components/schemas/{model}", mode="serialization"
            )
            for name, definition in chunk.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["ChatCompletionChunk"] = chunk
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
