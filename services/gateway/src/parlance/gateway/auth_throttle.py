"""Failed authentications per client address (the middleware's throttle before any key
lookup), counted with ratelimit.py's GCRA."""

from __future__ import annotations

import time

from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState


class FailedAuthThrottle:
    """Failed authentications per client address, so that guessing keys (or a client stuck
    on a wrong one) costs the gateway little: past `limit` failures a minute, the address gets
    429 without its key being looked at. GCRA in Redis (shared by every gateway), per process
    when Redis is down. Only failures touch Redis; a blocked address is remembered in process
    until its retry time, so its further requests cost no Redis call either."""

    def __init__(self, redis_state: RedisState, limit: int) -> None:
        self.limit = limit
        self.limiter = RateLimiter(redis_state, "local")
        self._blocked: dict[str, float] = {}

    def blocked_for(self, address: str) -> float:
        """Seconds the address must wait before trying again (0: it may try now)."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return 0.0
        return left

    async def failed(self, address: str) -> float:
        """Counts a failure; returns the seconds to wait when the address is now over."""
        if self.limit <= 0:
            return 0.0
        decision = await self.limiter.check("auth_failures", address, self.limit)
        if decision.allowed:
            return 0.0
        if len(self._blocked) > 100_000:
            now = time.monotonic()
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        wait = max(decision.retry_after_s, 1.0)
        self._blocked[address] = time.monotonic() + wait
        return wait
