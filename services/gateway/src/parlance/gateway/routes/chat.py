"""POST /v1/chat/completions: limits around the request flow of serving.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from parlance.common import tracing
from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.deps import LimitedCaller, State, tokens_headers
from parlance.gateway.leases import Lease
from parlance.gateway.metrics import IN_FLIGHT
from parlance.gateway.protocol import ChatCompletionRequest
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.rendering import render_completion
from parlance.gateway.serving import PreparedChat
from parlance.gateway.state import GatewayState

log = logging.getLogger(__name__)

router = APIRouter()

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def estimate_tokens(body: ChatCompletionRequest, settings_estimate: int) -> int:
    """What the TPM limit reserves before generating: ~4 characters a token for the prompt
    (reconciled with the real count afterwards) plus the completion budget of every choice."""
    prompt_chars = sum(len(m.text()) + 8 for m in body.messages)
    completion = body.requested_max_tokens() or settings_estimate
    return max(1, prompt_chars // 4) + completion * (body.n or 1)


class RequestLimits:
    """The TPM reservation and the concurrency lease of one request, and their settlement."""

    def __init__(self, state: GatewayState, caller: Principal, estimate: int) -> None:
        self.state = state
        self.caller = caller
        self.estimate = estimate
        self.tpm = caller.limits.tpm or state.settings.tpm_limit
        self.lease: Lease | None = None
        self.prepared: PreparedChat | None = None
        self._settled = False

    async def take(self, headers: dict[str, str]) -> None:
        state, caller = self.state, self.caller
        if self.tpm > 0:
            decision = await state.limiter.check("tpm", caller.key_id, self.tpm, cost=self.estimate)
            headers.update(decision.headers("tokens"))
            if not decision.allowed:
                too_large = self.estimate > self.tpm
                raise errors.rate_limited(
                    f"Request too large for key {caller.key_id}: {self.estimate} tokens "
                    f"requested, limit {self.tpm} tokens per minute. Reduce max_tokens."
                    if too_large
                    else f"Rate limit reached for tokens on key {caller.key_id}: limit "
                    f"{self.tpm} per minute. Please try again in {decision.retry_after_s:.1f}s.",
                    decision.retry_after_s,
                    headers,
                )
        limit = caller.limits.max_concurrent or state.settings.max_concurrent_per_key
        if limit > 0:
            self.lease = await state.leases.acquire(caller.key_id, limit)
            if self.lease is None:
                await self._refund_all()
                raise errors.rate_limited(
                    f"Too many concurrent requests on key {caller.key_id}: at most {limit} at "
                    "a time. Wait for one to finish.",
                    1.0,
                    headers,
                )

    async def _refund_all(self) -> None:
        if self.tpm > 0:
            await self.state.limiter.adjust("tpm", self.caller.key_id, self.tpm, -self.estimate)

    def settle(self) -> None:
        """Releases the lease and reconciles TPM with the real usage, once, in a task of its
        own: it also runs when the request was cancelled (client gone), where awaiting in the
        cancelled task is no longer possible."""
        if self._settled:
            return
        self._settled = True
        task = asyncio.create_task(self._settle())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _settle(self) -> None:
        try:
            if self.lease is not None:
                await self.state.leases.release(self.lease)
            if self.tpm > 0:
                used = self.prepared.tokens_used() if self.prepared else None
                if used is None:
                    await self._refund_all()
                else:
                    await self.state.limiter.adjust(
                        "tpm", self.caller.key_id, self.tpm, used - self.estimate
                    )
        except Exception:
            log.exception("settling request limits failed")


_background: set[asyncio.Task[None]] = set()


class ServerTiming:
    """Where a request's time went, as a Server-Timing header (auth, limits, context, cache,
    moderation, generator): visible in browser dev tools and curl -v, and what the benchmark
    reads to attribute time to first token."""

    def __init__(self, started: float) -> None:
        self.last = started
        self.parts: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.parts.append((name, (now - self.last) * 1000))
        tracing.record_stage(name, now - self.last)
        self.last = now

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.parts)


@router.post("/v1/chat/completions", response_model=None)
@tracing.traced("POST /v1/chat/completions")
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, caller: LimitedCaller, state: State
) -> Response:
    if body.model_extra:
        log.info("ignoring unknown request fields", extra={"fields": sorted(body.model_extra)})
    settings = state.settings
    headers: dict[str, str] = dict(getattr(request.state, "response_headers", {}))
    timing = ServerTiming(getattr(request.state, "started", time.perf_counter()))
    timing.mark("auth")
    if state.slots.locked():
        raise errors.service_unavailable(
            "The server is at its concurrency limit; retry shortly.", settings.retry_after_s
        )
    # Errors from here on carry the -tokens headers that limits.take adds to this dict.
    request.state.response_headers = headers
    # Validation first: a request refused as invalid reserves nothing.
    try:
        state.chat.validate(body, caller)
    except errors.APIError:
        headers.update(await tokens_headers(state, caller))
        raise
    limits = RequestLimits(state, caller, estimate_tokens(body, settings.tpm_completion_estimate))
    try:
        await limits.take(headers)
    except RedisUnavailable:
        raise errors.service_unavailable(
            "Rate limiting is unavailable (Redis); retry shortly.", settings.retry_after_s
        ) from None
    timing.mark("limits")
    await state.slots.acquire()
    IN_FLIGHT.inc()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            state.slots.release()
            IN_FLIGHT.dec()
            limits.settle()

    try:
        return await _serve(body, request, state, headers, limits, release, timing)
    except BaseException:
        release()
        raise


async def _serve(
    body: ChatCompletionRequest,
    request: Request,
    state: GatewayState,
    headers: dict[str, str],
    limits: RequestLimits,
    release: Callable[[], None],
    timing: ServerTiming,
) -> Response:
    chat = state.chat
    prepared = await chat.prepare(body, request.state.principal)
    limits.prepared = prepared
    timing.mark("context")
    bypass = "no-cache" in request.headers.get("cache-control", "").lower()
    if prepared.cache_key and not bypass:
        record = await state.cache.get(prepared.cache_key)
        timing.mark("cache")
        if record is not None:
            headers["server-timing"] = timing.header()
            headers["x-cache"] = "hit"
            # A cached answer costs no generation: its tokens are not charged to TPM.
            prepared.mark_cached()
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
    timing.mark("moderation")
    if body.stream:
        stream = await chat.open_stream(prepared)
        timing.mark("generator")  # until the generator's first message
        headers["server-timing"] = timing.header()
        return StreamingResponse(
            _released(chat.stream(prepared, stream), release),
            media_type="text/event-stream",
            headers={**headers, **SSE_HEADERS},
        )
    result = await chat.complete(prepared)
    timing.mark("generation")
    headers["server-timing"] = timing.header()
    release()
    return JSONResponse(result, headers=headers)


async def _released(
    events: AsyncIterator[bytes], release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Releases the request's slot and lease when the stream ends, fails or the client goes
    away."""
    try:
        async for event in events:
            yield event
    finally:
        release()
