"""The per-key limits a chat completion takes before it is served and settles afterwards
(key_limits.py, shared with embeddings): the estimate the tokens-per-minute limit reserves,
moved when intent routing changes the request, and the settlement in the background."""

from __future__ import annotations

import logging

from parlance.gateway.auth import Principal
from parlance.gateway.chat.background import Background
from parlance.gateway.chat.prepared import PreparedChat
from parlance.gateway.chat.protocol import ChatCompletionRequest
from parlance.gateway.config import GatewaySettings
from parlance.gateway.key_limits import KeyLimits
from parlance.gateway.leases import ConcurrencyLeases
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
    return max(1, prompt_chars // 4) + completion * generations(body)


def generations(body: ChatCompletionRequest) -> int:
    """The answers the engine generates for the request: n choices, or best_of candidates.
    TPM reserves each one's tokens and the concurrency lease counts each one (key_limits.py);
    RPM counts the request once."""
    return (body.n or 1) * (body.best_of or 1)


class RequestLimits(KeyLimits):
    """The TPM reservation and the concurrency lease of one chat request (key_limits.py), and
    their settlement with what it really used, once, in the background."""

    TOO_LARGE = (
        "Request too large for key {key_id}: {estimate} tokens requested, limit {tpm} tokens "
        "per minute. Reduce max_tokens."
    )

    def __init__(
        self,
        settings: GatewaySettings,
        limiter: RateLimiter,
        leases: ConcurrencyLeases,
        background: Background,
        caller: Principal,
        estimate: int,
        weight: int = 1,
    ) -> None:
        super().__init__(settings, limiter, leases, caller, estimate, weight)
        self.background = background
        # Set once the request is prepared: what it really cost is known from it.
        self.prepared: PreparedChat | None = None
        self._settled = False

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
            await self.limiter.adjust(
                "tpm", self.caller.key_id, self.tpm, change, local=self.reserved_locally
            )
        except Exception:
            log.warning("TPM reservation not adjusted to the intent route", exc_info=True)

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
            await self.settle_used(self.prepared.tokens_used() if self.prepared else None)
        except Exception:
            log.exception("settling request limits failed")
