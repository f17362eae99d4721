"""A request's TPM reservation and its concurrency lease in one Redis call, and their
settlement in one (key_limits.py uses them when a key has both limits and Redis answers).

Taken one by one they were four of the five Redis round trips of a streamed chat request (the
RPM decision is the fifth); each round trip costs the gateway's one event loop ~0.1 ms of CPU
in redis-py, a large part of the per-request cost at 100 concurrent streams
(bench/results/perf_cpu.md). The scripts are ratelimit.py's GCRA and leases.py's lease, in
one atomic step: a lease refused charges no tokens (before, they were charged, then
refunded), and tokens refused take no lease. Both keys are one API key's, on the one Redis
(a Redis Cluster would need them in one hash slot). Redis down: the caller takes the limits
one by one, each with its own outage policy.

A call whose reply was lost (a timeout) may have run all the same. So neither is repeated
one by one: a lost admission's request takes the limits under the outage policy, and what the
admission may have taken in Redis is given back in the background once Redis is tried again
(give_back(), whatever becomes of the request: refused, settled or still running; undo(): the
settlement script, which applies its tokens only when it removed the lease, so that it gives
back nothing for an admission that did not run, and nothing twice, however often it is
retried); a lost settlement stands (its lease expires with its TTL).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from dataclasses import dataclass

from parlance.gateway.leases import ConcurrencyLeases, Lease
from parlance.gateway.metrics import RATE_LIMIT
from parlance.gateway.ratelimit import (
    _READ_STATE_LUA,
    _WRITE_STATE_LUA,
    GCRA_DECIDE_LUA,
    Decision,
    RateLimiter,
)
from parlance.gateway.redis_state import RedisCallFailed, RedisUnavailable

# KEYS: the TPM limit's key, the lease set. ARGV: period_ms, limit, cost, lease limit, lease
# ttl_ms, then the lease's members (one per unit of weight). Returns {allowed, remaining,
# reset_ms, retry_ms, leased}: GCRA_LUA's decision (tokens written only when the lease is
# taken too) and whether the lease was (leases.py's ACQUIRE_LUA: all its units or none).
ADMIT_LUA = (
    _READ_STATE_LUA
    + _WRITE_STATE_LUA
    + GCRA_DECIDE_LUA
    + """
if refused then
  return {0, refused_remaining, math.ceil(ahead), math.ceil(new_ahead - period), 0}
end
local remaining = math.floor((period + tol - new_ahead) / interval)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) + #ARGV - 5 > tonumber(ARGV[4]) then
  return {1, remaining, math.ceil(new_ahead), 0, 0}
end
if cost > 0 then write_state(new_ahead) end
for i = 6, #ARGV do redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[5]))
return {1, remaining, math.ceil(new_ahead), 0, 1}
"""
)

# KEYS: the TPM limit's key, the lease set. ARGV: period_ms, limit, delta, then the lease's
# members. Removes the lease, then ADJUST_LUA's charge or refund of `delta` (0: none); none
# when no member was left to remove: never taken (a lost admission that did not run), settled
# before, or expired and dropped (its gateway lost Redis for longer than the lease's TTL: its
# estimate stands).
SETTLE_LUA = (
    _READ_STATE_LUA
    + _WRITE_STATE_LUA
    + """
local removed = 0
for i = 4, #ARGV do removed = removed + redis.call('ZREM', KEYS[2], ARGV[i]) end
local delta = tonumber(ARGV[3])
if delta == 0 or removed == 0 then return 0 end
ahead = ahead + tonumber(ARGV[1]) / tonumber(ARGV[2]) * delta
if ahead <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
write_state(ahead)
return math.ceil(ahead)
"""
)

PERIOD_MS = 60_000
# The least time between two attempts of give_back() (Redis's back-off is usually longer).
UNDO_RETRY_S = 0.1

log = logging.getLogger(__name__)

_JOINT: weakref.WeakKeyDictionary[ConcurrencyLeases, JointLimits] = weakref.WeakKeyDictionary()


@dataclass
class Admitted:
    decision: Decision
    lease: Lease | None


class AdmissionLost(RedisCallFailed):
    """The admission's call failed after it was sent: it may have taken `lease` and its tokens
    in Redis all the same (undo() gives them back)."""

    def __init__(self, lease: Lease) -> None:
        super().__init__()
        self.lease = lease


class JointLimits:
    """The two scripts, on the limiter's and the leases' Redis; one per pair (of())."""

    @classmethod
    def of(cls, limiter: RateLimiter, leases: ConcurrencyLeases) -> JointLimits:
        joint = _JOINT.get(leases)
        if joint is None or joint.limiter is not limiter:
            joint = _JOINT[leases] = cls(limiter, leases)
        return joint

    def __init__(self, limiter: RateLimiter, leases: ConcurrencyLeases) -> None:
        self.limiter = limiter
        self.leases = leases
        client = limiter.redis.client
        self._admit = client.register_script(ADMIT_LUA) if client is not None else None
        self._settle = client.register_script(SETTLE_LUA) if client is not None else None
        self._giving_back: set[asyncio.Task[None]] = set()

    async def admit(
        self, key_id: str, tpm: int, cost: int, lease_limit: int, weight: int
    ) -> Admitted:
        """The TPM decision for `cost` and, when it allows, a lease of `weight` units (None:
        refused). Raises RedisUnavailable (nothing taken: the caller takes them one by one),
        AdmissionLost when the call failed once sent (maybe taken)."""
        script = self._admit
        if script is None:
            raise RedisUnavailable()
        lease_key = f"{self.leases.prefix}{key_id}"
        keys = [f"{self.limiter.prefix}tpm:{key_id}", lease_key]
        wanted = Lease(lease_key, uuid.uuid4().hex, local=False, weight=weight)
        args: list[str | int] = [PERIOD_MS, tpm, cost, lease_limit, self.leases.ttl_ms]
        args += wanted.members
        try:
            raw = await self.limiter.redis.run(lambda _: script(keys=keys, args=args))
        except RedisCallFailed as exc:
            raise AdmissionLost(wanted) from exc
        allowed, remaining, reset_ms, retry_ms, leased = (int(x) for x in raw)
        RATE_LIMIT.labels("tpm", "allowed" if allowed else "rejected").inc()
        decision = Decision(bool(allowed), tpm, max(0, remaining), reset_ms / 1000, retry_ms / 1000)
        if not allowed:
            return Admitted(decision, None)
        return Admitted(decision, self.leases.counted(wanted if leased else None))

    async def settle(self, key_id: str, tpm: int, lease: Lease, delta: int) -> None:
        """Releases `lease` and charges (refunds, when negative) `delta` tokens. The lease's
        heartbeat stops whatever happens: on a failure (RedisUnavailable: Redis down, or the
        reply lost after the script ran; a script error; a cancellation) its members expire
        with their TTL instead of being renewed for ever."""
        try:
            await self._run_settle(key_id, tpm, lease, delta)
        finally:
            self.leases.stopped(lease)

    async def undo(self, key_id: str, tpm: int, lost: AdmissionLost, cost: int) -> None:
        """Gives back what a lost admission of `cost` tokens took, if it ran: its lease and
        its tokens (nothing when it did not). Raises RedisUnavailable."""
        await self._run_settle(key_id, tpm, lost.lease, -cost)

    def give_back(self, key_id: str, tpm: int, lost: AdmissionLost, cost: int) -> None:
        """undo() in a task of its own: from when Redis is tried again (after the back-off of
        the failure that lost the reply), retried until the lease's TTL has passed (then Redis
        has dropped the lease by itself; its tokens stand). Undone within the back-off, or not
        at all for a request refused after the lost reply, the lease locked a key allowed one
        request at a time out for its TTL. close() cancels what is left."""
        task = asyncio.create_task(self._give_back(key_id, tpm, lost, cost))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, key_id: str, tpm: int, lost: AdmissionLost, cost: int) -> None:
        until = time.monotonic() + self.leases.ttl_ms / 1000
        while True:
            await asyncio.sleep(max(self.limiter.redis.back_in_s(), UNDO_RETRY_S))
            try:
                await self.undo(key_id, tpm, lost, cost)
                return
            except RedisUnavailable:
                if time.monotonic() >= until:
                    log.warning("a lost admission's lease and tokens waited for their expiry")
                    return
            except Exception:
                log.exception("giving back a lost admission failed")
                return

    async def close(self) -> None:
        """Cancels the give_back() tasks still waiting (shutdown)."""
        tasks = list(self._giving_back)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_settle(self, key_id: str, tpm: int, lease: Lease, delta: int) -> None:
        script = self._settle
        if script is None or lease.local:
            raise RedisUnavailable()
        keys = [f"{self.limiter.prefix}tpm:{key_id}", lease.key]
        args: list[str | int] = [PERIOD_MS, tpm, delta, *lease.members]
        await self.limiter.redis.run(lambda _: script(keys=keys, args=args))
