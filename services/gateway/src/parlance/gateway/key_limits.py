"""The per-key limits a request takes before it is served and settles afterwards, for chat
completions (chat/limits.py) and embeddings (embeddings.py): the tokens-per-minute reservation
of an estimate, reconciled with what the request really used, and the concurrency lease. The
requests-per-minute decision is taken earlier, for every limited route (deps.rate_limit): it
counts HTTP requests, one each, as OpenAI's x-ratelimit-*-requests headers do. What a request
generates is counted by TPM (every answer's tokens) and by the lease's weight: a request that
generates k answers at once (best_of, n) holds k units of the key's concurrency, as k requests
would, capped at the whole limit so that no request is refused for good."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import ClassVar

from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.config import GatewaySettings
from parlance.gateway.joint_limits import AdmissionLost, JointLimits
from parlance.gateway.leases import ConcurrencyLeases, Lease
from parlance.gateway.ratelimit import Decision, RateLimiter
from parlance.gateway.redis_state import RedisUnavailable

log = logging.getLogger(__name__)


class KeyLimits:
    """The TPM reservation and the concurrency lease of one request, and their settlement."""

    # How the 429 of an estimate over the whole TPM limit words it.
    TOO_LARGE: ClassVar[str] = (
        "Request too large for key {key_id}: {estimate} tokens estimated, limit {tpm} tokens "
        "per minute."
    )

    def __init__(
        self,
        settings: GatewaySettings,
        limiter: RateLimiter,
        leases: ConcurrencyLeases,
        caller: Principal,
        estimate: int,
        weight: int = 1,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.leases = leases
        self.caller = caller
        self.estimate = estimate
        # Answers generated at once: the units of concurrency the request holds.
        self.weight = max(1, weight)
        self.tpm = caller.limits.tpm or settings.tpm_limit
        self.lease: Lease | None = None
        # The TPM reservation was charged by the per-process fallback: it is settled there.
        self.reserved_locally = False

    async def take(self, headers: MutableMapping[str, str]) -> None:
        """Reserves the estimate from TPM and takes a concurrency lease (429 otherwise); the
        x-ratelimit-*-tokens headers go into `headers`. Both on Redis: in one call
        (joint_limits.py), else one by one."""
        limit = self.caller.limits.max_concurrent or self.settings.max_concurrent_per_key
        weight = min(self.weight, limit)
        if self.tpm > 0 and limit > 0:
            joint = JointLimits.of(self.limiter, self.leases)
            try:
                admitted = await joint.admit(
                    self.caller.key_id, self.tpm, self.estimate, limit, weight
                )
            except AdmissionLost as lost:
                # It may have run: given back in the background once Redis is tried again,
                # whatever becomes of the request (refused below, settled, still running).
                joint.give_back(self.caller.key_id, self.tpm, lost, self.estimate)
            except RedisUnavailable:
                pass  # one by one below, each with its outage policy
            else:
                self._decided(admitted.decision, headers)
                self.lease = admitted.lease
                if self.lease is None:  # no tokens were charged: nothing to refund
                    raise self._too_many(limit, weight, headers)
                return
        if self.tpm > 0:
            await self._reserve(headers)
        if limit > 0:
            self.lease = await self.leases.acquire(self.caller.key_id, limit, weight)
            if self.lease is None:
                await self.settle_used(None)
                raise self._too_many(limit, weight, headers)

    def _too_many(
        self, limit: int, weight: int, headers: MutableMapping[str, str]
    ) -> errors.APIError:
        counted = (
            f" (this one counts {weight}: it generates {self.weight} answers)" if weight > 1 else ""
        )
        return errors.rate_limited(
            f"Too many concurrent requests on key {self.caller.key_id}: at most "
            f"{limit} at a time{counted}. Wait for one to finish.",
            1.0,
            dict(headers),
        )

    async def _reserve(self, headers: MutableMapping[str, str]) -> None:
        decision = await self.limiter.check("tpm", self.caller.key_id, self.tpm, cost=self.estimate)
        self.reserved_locally = decision.local
        self._decided(decision, headers)

    def _decided(self, decision: Decision, headers: MutableMapping[str, str]) -> None:
        """The TPM decision's headers; 429 when it refused."""
        key_id = self.caller.key_id
        headers.update(decision.headers("tokens"))
        if decision.allowed:
            return
        raise errors.rate_limited(
            self.TOO_LARGE.format(key_id=key_id, estimate=self.estimate, tpm=self.tpm)
            if self.estimate > self.tpm
            else f"Rate limit reached for tokens on key {key_id}: limit {self.tpm} per minute. "
            f"Please try again in {decision.retry_after_s:.1f}s.",
            decision.retry_after_s,
            dict(headers),
        )

    async def settle_used(self, used: int | None) -> None:
        """Releases the lease; charges what the request really used (None: refunds it all).
        A lease in Redis and TPM: in one call (joint_limits.py), else one by one, each where it
        was taken. Each applied once: a joint settlement that failed may have run (a lost
        reply), so it is not repeated one by one; its lease expires with its TTL. (A lost
        admission is given back by take(), not here.)"""
        delta = (used or 0) - self.estimate
        if self.lease is not None and not self.lease.local and self.tpm > 0:
            lease, self.lease = self.lease, None
            joint = JointLimits.of(self.limiter, self.leases)
            try:
                await joint.settle(self.caller.key_id, self.tpm, lease, delta)
            except RedisUnavailable:
                log.warning("request limits not settled (Redis); the lease will expire")
            return
        if self.lease is not None:
            await self.leases.release(self.lease)
            self.lease = None
        if self.tpm > 0:
            await self.limiter.adjust(
                "tpm", self.caller.key_id, self.tpm, delta, local=self.reserved_locally
            )
