"""Requests-per-minute limits per API key, with GCRA (the generic cell rate algorithm).

Why GCRA: one atomic Redis operation per decision (a Lua script reading and writing a single
"theoretical arrival time"), one small key per limit, exact `remaining` and `reset` values for
OpenAI's x-ratelimit headers, and no double burst at a window edge (a fixed window lets 2N
requests through across a boundary; GCRA spaces them so that any period holds at most N).
The script reads Redis's own clock so several gateways agree. Without Redis the same algorithm
runs per process (limits then apply per gateway replica; the metrics say so).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from parlance.gateway.metrics import RATE_LIMIT
from parlance.gateway.redis_state import RedisState, RedisUnavailable

log = logging.getLogger(__name__)

# KEYS[1]: the limit's key. ARGV: period_ms, limit, cost.
# Returns {allowed (0/1), remaining, reset_ms (until fully replenished), retry_after_ms}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local interval = period / limit
-- Float sums of period / limit drift by a few ulps: without this tolerance the N-th request
-- of a burst within one millisecond could be refused and `remaining` read one too low.
local eps = 1e-6
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local ahead = new_tat - now
if ahead > period + eps then
  local remaining = math.floor((period - (tat - now)) / interval + eps)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, math.ceil(tat - now), math.ceil(ahead - period)}
end
-- %.17g: Lua's tostring keeps 14 digits, i.e. 0.1 ms at today's epoch, which adds up.
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil(ahead) + 1)
return {1, math.floor((period - ahead) / interval + eps), math.ceil(ahead), 0}
"""


# Charges (delta > 0) or refunds (delta < 0) tokens after the fact, without a decision: TPM
# reconciles its estimate with the real usage this way. KEYS[1]; ARGV: period_ms, limit, delta.
ADJUST_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1]) / tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + interval * tonumber(ARGV[3])
if tat <= now then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1)
return math.ceil(tat - now)
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float

    def headers(self, kind: str = "requests") -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for this limit."""
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(self.remaining),
            f"x-ratelimit-reset-{kind}": format_duration(self.reset_s),
        }


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "20ms"."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, secs = divmod(int(seconds + 0.999), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


# Tolerance (ms, or intervals) for float drift; see GCRA_LUA.
_EPS = 1e-6


class LocalGCRA:
    """The same algorithm in process memory (the Redis-outage fallback)."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    def decide(
        self, key: str, period_ms: float, limit: int, cost: int
    ) -> tuple[int, int, int, int]:
        now = time.monotonic() * 1000
        interval = period_ms / limit
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + interval * cost
        ahead = new_tat - now
        if ahead > period_ms + _EPS:
            remaining = max(0, int((period_ms - (tat - now)) / interval + _EPS))
            return 0, remaining, int(tat - now), int(ahead - period_ms) + 1
        self._tat[key] = new_tat
        self._prune(now)
        return 1, int((period_ms - ahead) / interval + _EPS), int(ahead), 0

    def adjust(self, key: str, period_ms: float, limit: int, delta: int) -> None:
        now = time.monotonic() * 1000
        tat = max(self._tat.get(key, now), now) + period_ms / limit * delta
        self._tat[key] = max(tat, now)

    def _prune(self, now: float) -> None:
        if len(self._tat) > 100_000:
            # Drop replenished entries so idle keys do not grow memory without bound.
            self._tat = {k: v for k, v in self._tat.items() if v > now}


class RateLimiter:
    """GCRA decisions in Redis; `on_redis_down` is "local" (per-process GCRA), "open" (allow)
    or "closed" (refuse: the caller answers 503)."""

    def __init__(
        self, redis_state: RedisState, on_redis_down: str = "local", prefix: str = "parlance:rl:"
    ) -> None:
        self.redis = redis_state
        self.prefix = prefix
        self.on_redis_down = on_redis_down
        self.local = LocalGCRA()
        client = redis_state.client
        self._script = client.register_script(GCRA_LUA) if client is not None else None
        self._adjust = client.register_script(ADJUST_LUA) if client is not None else None

    async def check(
        self, name: str, subject: str, limit: int, period_s: float = 60.0, cost: int = 1
    ) -> Decision:
        key = f"{self.prefix}{name}:{subject}"
        period_ms = period_s * 1000
        try:
            allowed, remaining, reset_ms, retry_ms = await self._gcra(key, period_ms, limit, cost)
        except RedisUnavailable:
            if self.on_redis_down == "closed":
                raise
            if self.on_redis_down == "open":
                allowed, remaining, reset_ms, retry_ms = 1, limit, 0, 0
            else:
                allowed, remaining, reset_ms, retry_ms = self.local.decide(
                    key, period_ms, limit, cost
                )
        RATE_LIMIT.labels(name, "allowed" if allowed else "rejected").inc()
        return Decision(
            allowed=bool(allowed),
            limit=limit,
            remaining=max(0, remaining),
            reset_s=reset_ms / 1000,
            retry_after_s=retry_ms / 1000,
        )

    async def peek(
        self, name: str, subject: str, limit: int, period_s: float = 60.0
    ) -> Decision | None:
        """The limit's state without a decision (cost 0, not counted in the metrics), for the
        x-ratelimit-* headers of a request refused before it reached this limit; None when
        Redis is down and the policy is "closed"."""
        key = f"{self.prefix}{name}:{subject}"
        period_ms = period_s * 1000
        try:
            _, remaining, reset_ms, _ = await self._gcra(key, period_ms, limit, 0)
        except RedisUnavailable:
            if self.on_redis_down == "closed":
                return None
            if self.on_redis_down == "open":
                remaining, reset_ms = limit, 0
            else:
                _, remaining, reset_ms, _ = self.local.decide(key, period_ms, limit, 0)
        return Decision(True, limit, max(0, remaining), reset_ms / 1000, 0.0)

    async def _gcra(
        self, key: str, period_ms: float, limit: int, cost: int
    ) -> tuple[int, int, int, int]:
        """(allowed, remaining, reset_ms, retry_ms) from the GCRA script in Redis; cost 0
        reads the state without changing it. Raises RedisUnavailable."""
        script = self._script
        if script is None:
            raise RedisUnavailable()
        raw = await self.redis.run(lambda _: script(keys=[key], args=[int(period_ms), limit, cost]))
        allowed, remaining, reset_ms, retry_ms = (int(x) for x in raw)
        return allowed, remaining, reset_ms, retry_ms

    async def adjust(
        self, name: str, subject: str, limit: int, delta: int, period_s: float = 60.0
    ) -> None:
        """Charges or refunds `delta` units (TPM reconciliation)."""
        if delta == 0 or limit <= 0:
            return
        key = f"{self.prefix}{name}:{subject}"
        period_ms = int(period_s * 1000)
        script = self._adjust
        try:
            if script is None:
                raise RedisUnavailable()
            await self.redis.run(lambda _: script(keys=[key], args=[period_ms, limit, delta]))
        except RedisUnavailable:
            self.local.adjust(key, period_ms, limit, delta)
