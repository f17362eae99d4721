"""The per-key limits a chat completion takes before it is served and settles afterwards:
the tokens-per-minute reservation (reconciled with the real usage) and the concurrency lease.
The requests-per-minute decision is taken earlier, for every limited route (deps.rate_limit)."""

from __future__ import annotations

import logging

from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.chat.background import Background
from parlance.gateway.chat.prepared import PreparedChat
from parlance.gateway.chat.protocol import ChatCompletionRequest
from parlance.gateway.config import GatewaySettings
from parlance.gateway.leases import ConcurrencyLeases, Lease
from parlance.gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)


def estimate_tokens(body: ChatCompletionRequest, settings_estimate: int, limit: int = 0) -> int:
    """What the TPM limit reserves before generating: ~4 characters a token for the prompt
    (reconciled with the real count afterwards) plus the completion budget of every choice:
    max_tokens, or when the request sets none the settings' estimate, never more than the
    key's `limit` (the most a choice can get). best_of generates k candidates: each counts as a
    choice (chat/best_of.py)."""
    prompt_chars = sum(len(m.text()) + 8 for m in body.messages)
    completion = body.requested_max_tokens() or (
        min(settings_estimate, limit) if limit else settings_estimate
    )
    return max(1, prompt_chars // 4) + completion * (body.n or 1) * (body.best_of or 1)


class RequestLimits:
    """The TPM reservation and the concurrency lease of one request, and their settlement."""

    def __init__(
        self,
        settings: GatewaySettings,
        limiter: RateLimiter,
        leases: ConcurrencyLeases,
        background: Background,
        caller: Principal,
        estimate: int,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.leases = leases
        self.background = background
        self.caller = caller
        self.estimate = estimate
        self.tpm = caller.limits.tpm or settings.tpm_limit
        self.lease: Lease | None = None
        # Set once the request is prepared: what it really cost is known from it.
        self.prepared: PreparedChat | None = None
        self._settled = False

    async def take(self, headers: dict[str, str]) -> None:
        """Reserves the estimate from TPM and takes a concurrency lease (429 otherwise); the
        x-ratelimit-*-tokens headers go into `headers`."""
        if self.tpm > 0:
            await self._reserve(headers)
        limit = self.caller.limits.max_concurrent or self.settings.max_concurrent_per_key
        if limit > 0:
            self.lease = await self.leases.acquire(self.caller.key_id, limit)
            if self.lease is None:
                await self._refund_all()
                raise errors.rate_limited(
                    f"Too many concurrent requests on key {self.caller.key_id}: at most "
                    f"{limit} at a time. Wait for one to finish.",
                    1.0,
                    headers,
                )

    async def _reserve(self, headers: dict[str, str]) -> None:
        key_id = self.caller.key_id
        decision = await self.limiter.check("tpm", key_id, self.tpm, cost=self.estimate)
        headers.update(decision.headers("tokens"))
        if decision.allowed:
            return
        too_large = self.estimate > self.tpm
        raise errors.rate_limited(
            f"Request too large for key {key_id}: {self.estimate} tokens "
            f"requested, limit {self.tpm} tokens per minute. Reduce max_tokens."
            if too_large
            else f"Rate limit reached for tokens on key {key_id}: limit "
            f"{self.tpm} per minute. Please try again in {decision.retry_after_s:.1f}s.",
            decision.retry_after_s,
            headers,
        )

    async def reestimate(self, estimate: int) -> None:
        """A new estimate once intent routing changed the request (a route's max_tokens or
        system prompt): the reservation moves by the difference, without a second check (the
        request was admitted). The estimate changes before the await, so that a settlement
        running meanwhile reconciles against the new one (the sum stays right in any order):
        it may run in the background, off the way to the first token."""
        change = estimate - self.estimate
        self.estimate = estimate
        if self.tpm <= 0 or change == 0:
            return
        try:
            await self.limiter.adjust("tpm", self.caller.key_id, self.tpm, change)
        except Exception:
            log.warning("TPM reservation not adjusted to the intent route", exc_info=True)

    async def _refund_all(self) -> None:
        if self.tpm > 0:
            await self.limiter.adjust("tpm", self.caller.key_id, self.tpm, -self.estimate)

    def settle(self) -> None:
        """Releases the lease and reconciles TPM with the real usage, once, in a task of its
        own: it also runs when the request was cancelled (client gone), where awaiting in the
        cancelled task is no longer possible."""
        if self._settled:
            return
        self._settled = True
        self.background.spawn(self._settle())

    async def _settle(self) -> None:
        try:
            if self.lease is not None:
                await self.leases.release(self.lease)
            if self.tpm > 0:
                used = self.prepared.tokens_used() if self.prepared else None
                if used is None:
                    await self._refund_all()
                else:
                    await self.limiter.adjust(
                        "tpm", self.caller.key_id, self.tpm, used - self.estimate
                    )
        except Exception:
            log.exception("settling request limits failed")
