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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from parlance.gateway.metrics import RATE_LIMIT, RATE_LIMIT_ADJUSTMENTS_LOST
from parlance.gateway.redis_state import RedisState, RedisUnavailable

log = logging.getLogger(__name__)

# The state of a limit is how far its "theoretical arrival time" (TAT) runs ahead of the clock,
# stored with the millisecond it was written: "<written_ms> <ahead_ms>". Why not the TAT itself:
# an absolute TAT is ~1.8e12 ms, where a double's step is 2.4e-4 ms, so adding `period / limit`
# once per request drifts by that much each time; over a burst the drift passes any small
# tolerance and the N-th request reads one `remaining` too low, or is refused. Offsets stay
# below the period (~6e4 ms, step 7e-12 ms) and `now - written_ms` is an exact integer.

# Slack (ms) in every comparison: far above the float error of the offsets (1e-11 ms per
# request), far below the clock's resolution (1 ms), so a burst of N gets exactly N through.
TOLERANCE_MS = 0.001

# The clock is read on one line (CLOCK_LUA) so that tests can freeze it.
CLOCK_LUA = "local t = redis.call('TIME')"

# Reads the stored offset into `ahead` (ms, >= 0) for `now` (integer ms). A bare number is the
# absolute TAT that versions before the offset format stored; such keys live at most a period.
_READ_STATE_LUA = (
    CLOCK_LUA
    + """
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ahead = 0
local state = redis.call('GET', KEYS[1])
if state then
  local written, stored = string.match(state, '^(%d+) (%S+)$')
  if written then
    ahead = tonumber(stored) - (now - tonumber(written))
  else
    ahead = tonumber(state) - now
  end
  if ahead < 0 then ahead = 0 end
end
"""
)

# Writes `ahead` back, expiring the key when it has fully replenished.
_WRITE_STATE_LUA = """
local function write_state(offset)
  redis.call('SET', KEYS[1], string.format('%d %.17g', now, offset), 'PX', math.ceil(offset) + 1)
end
"""

# GCRA's decision for ARGV[1..3] (period_ms, limit, cost), after _READ_STATE_LUA: `refused`
# and, when refused, `refused_remaining`; `new_ahead` and `interval` for an allowed cost. Shared
# by GCRA_LUA and joint_limits.py's ADMIT_LUA.
GCRA_DECIDE_LUA = (
    f"local tol = {TOLERANCE_MS!r}"
    + """
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local interval = period / limit
local new_ahead = ahead + interval * cost
local refused = new_ahead > period + tol
local refused_remaining = math.max(0, math.floor((period + tol - ahead) / interval))
"""
)

# KEYS[1]: the limit's key. ARGV: period_ms, limit, cost (0 reads without writing).
# Returns {allowed (0/1), remaining, reset_ms (until fully replenished), retry_after_ms}.
GCRA_LUA = (
    _READ_STATE_LUA
    + _WRITE_STATE_LUA
    + GCRA_DECIDE_LUA
    + """
if refused then
  return {0, refused_remaining, math.ceil(ahead), math.ceil(new_ahead - period)}
end
if cost > 0 then write_state(new_ahead) end
return {1, math.floor((period + tol - new_ahead) / interval), math.ceil(new_ahead), 0}
"""
)


# Charges (delta > 0) or refunds (delta < 0) tokens after the fact, without a decision: TPM
# reconciles its estimate with the real usage this way. KEYS[1]; ARGV: period_ms, limit, delta.
# Returns the ms until fully replenished.
ADJUST_LUA = (
    _READ_STATE_LUA
    + _WRITE_STATE_LUA
    + """
ahead = ahead + tonumber(ARGV[1]) / tonumber(ARGV[2]) * tonumber(ARGV[3])
if ahead <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
write_state(ahead)
return math.ceil(ahead)
"""
)


def gcra(
    ahead_ms: float, period_ms: float, limit: int, cost: int
) -> tuple[int, int, int, int, float]:
    """One GCRA decision from the current offset: (allowed, remaining, reset_ms, retry_ms,
    the new offset). GCRA_LUA is this function in Lua; tests hold the two to each other."""
    interval = period_ms / limit
    new_ahead = ahead_ms + interval * cost
    if new_ahead > period_ms + TOLERANCE_MS:
        remaining = max(0, math.floor((period_ms + TOLERANCE_MS - ahead_ms) / interval))
        return 0, remaining, math.ceil(ahead_ms), math.ceil(new_ahead - period_ms), ahead_ms
    remaining = math.floor((period_ms + TOLERANCE_MS - new_ahead) / interval)
    return 1, remaining, math.ceil(new_ahead), 0, new_ahead


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float
    # Decided by the per-process fallback (Redis down): a cost it charged is there, and is
    # adjusted there (adjust(local=True)).
    local: bool = False

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


class LocalGCRA:
    """The same algorithm in process memory (the Redis-outage fallback). State per key is the
    offset and the monotonic nanosecond it was written, for the reason given above GCRA_LUA."""

    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock_ns = clock_ns
        self._state: dict[str, tuple[int, float]] = {}

    def decide(
        self, key: str, period_ms: float, limit: int, cost: int
    ) -> tuple[int, int, int, int]:
        now_ns = self._clock_ns()
        allowed, remaining, reset_ms, retry_ms, ahead = gcra(
            self._ahead(key, now_ns), period_ms, limit, cost
        )
        if allowed and cost > 0:
            self._state[key] = (now_ns, ahead)
            self._prune(now_ns)
        return allowed, remaining, reset_ms, retry_ms

    def adjust(self, key: str, period_ms: float, limit: int, delta: int) -> None:
        now_ns = self._clock_ns()
        ahead = self._ahead(key, now_ns) + period_ms / limit * delta
        if ahead > 0:
            self._state[key] = (now_ns, ahead)
        else:
            self._state.pop(key, None)

    def _ahead(self, key: str, now_ns: int) -> float:
        written_ns, ahead = self._state.get(key, (now_ns, 0.0))
        return max(0.0, ahead - (now_ns - written_ns) / 1e6)

    def _prune(self, now_ns: int) -> None:
        if len(self._state) > 100_000:
            # Drop replenished entries so idle keys do not grow memory without bound.
            self._state = {k: v for k, v in self._state.items() if self._ahead(k, now_ns) > 0}


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
        local = False
        try:
            allowed, remaining, reset_ms, retry_ms = await self._gcra(key, period_ms, limit, cost)
        except RedisUnavailable:
            if self.on_redis_down == "closed":
                raise
            local = True
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
            local=local,
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
        self,
        name: str,
        subject: str,
        limit: int,
        delta: int,
        period_s: float = 60.0,
        *,
        local: bool = False,
    ) -> None:
        """Charges or refunds `delta` units (TPM reconciliation), in Redis or, for a cost the
        per-process fallback charged (Decision.local), in the process. A reservation in Redis
        is never adjusted in the process instead (it does not hold it; a lost reply may have
        applied it already): unconfirmed, it is logged and counted, and its estimate stands."""
        if delta == 0 or limit <= 0:
            return
        key = f"{self.prefix}{name}:{subject}"
        period_ms = int(period_s * 1000)
        script = self._adjust
        if local:
            self.local.adjust(key, period_ms, limit, delta)
            return
        try:
            if script is None:
                raise RedisUnavailable()
            await self.redis.run(lambda _: script(keys=[key], args=[period_ms, limit, delta]))
        except RedisUnavailable:
            RATE_LIMIT_ADJUSTMENTS_LOST.labels(name).inc()
            log.warning("%s adjustment of %d not confirmed by Redis; not retried", name, delta)
