"""Concurrency leases: at most K in-flight requests per API key, across every gateway replica.

A lease is a member of a Redis sorted set per key, scored by its expiry time; a lease of weight
w (a best_of or n request generating w answers at once: chat/limits.py) is w members, taken
together or not at all. Taking one is a single Lua script (drop expired members, count, add);
a heartbeat pushes the expiry forward
while the stream lives; the lease is removed on completion, error, client disconnect or
timeout. A gateway that crashes stops its heartbeats, so its leases expire on their own after
`ttl_s`. Without Redis the same limit is kept per process (or, by setting, the request is
allowed or refused).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from parlance.gateway.metrics import LEASES_HELD, RATE_LIMIT
from parlance.gateway.redis_state import RedisState, RedisUnavailable

log = logging.getLogger(__name__)

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

ACQUIRE_LUA = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local weight = #ARGV - 2
if redis.call('ZCARD', KEYS[1]) + weight > tonumber(ARGV[1]) then return 0 end
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"""
)
HEARTBEAT_LUA = (
    _NOW_MS
    + """
local changed = 0
for i = 2, #ARGV do
  changed = changed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return changed
"""
)
COUNT_LUA = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')\n"


@dataclass
class Lease:
    key: str
    lease_id: str
    local: bool
    heartbeat: asyncio.Task[None] | None = field(default=None, repr=False)
    weight: int = 1

    @property
    def members(self) -> list[str]:
        """The sorted-set members (or local entries) this lease holds: one per unit of weight."""
        if self.weight == 1:
            return [self.lease_id]
        return [f"{self.lease_id}:{i}" for i in range(self.weight)]


class ConcurrencyLeases:
    def __init__(
        self,
        redis_state: RedisState,
        ttl_s: float = 30.0,
        on_redis_down: str = "local",
        prefix: str = "parlance:lease:",
    ) -> None:
        self.redis = redis_state
        self.ttl_ms = int(ttl_s * 1000)
        self.on_redis_down = on_redis_down
        self.prefix = prefix
        self._local: dict[str, set[str]] = {}
        client = redis_state.client
        self._acquire = client.register_script(ACQUIRE_LUA) if client else None
        self._heartbeat = client.register_script(HEARTBEAT_LUA) if client else None
        self._count = client.register_script(COUNT_LUA) if client else None

    async def acquire(self, key_id: str, limit: int, weight: int = 1) -> Lease | None:
        """A lease of `weight` units, or None when fewer than that are free of the key's
        `limit` (a weight above the limit is never granted: callers cap it)."""
        key = f"{self.prefix}{key_id}"
        wanted = Lease(key, uuid.uuid4().hex, local=False, weight=weight)
        try:
            script = self._acquire
            if script is None:
                raise RedisUnavailable()
            args: list[str | int] = [limit, self.ttl_ms, *wanted.members]
            ok = await self.redis.run(lambda _: script(keys=[key], args=args))
            lease = wanted if int(ok) else None
        except RedisUnavailable:
            lease = self._acquire_local(wanted, limit)
        return self.counted(lease)

    def counted(self, lease: Lease | None) -> Lease | None:
        """A lease taken (None: refused), here or by joint_limits.py's script: counted in the
        metrics and, in Redis, kept alive by heartbeats until released."""
        RATE_LIMIT.labels("concurrency", "allowed" if lease else "rejected").inc()
        if lease is not None:
            LEASES_HELD.inc()
            if not lease.local:
                lease.heartbeat = asyncio.create_task(self._beat(lease))
        return lease

    def _acquire_local(self, wanted: Lease, limit: int) -> Lease | None:
        wanted.local = True
        if self.on_redis_down == "open":
            return wanted
        if self.on_redis_down == "closed":
            raise RedisUnavailable()
        held = self._local.setdefault(wanted.key, set())
        if len(held) + wanted.weight > limit:
            return None
        held.update(wanted.members)
        return wanted

    async def _beat(self, lease: Lease) -> None:
        script = self._heartbeat
        assert script is not None
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self.redis.run(
                    lambda _: script(keys=[lease.key], args=[self.ttl_ms, *lease.members])
                )
            except RedisUnavailable:
                continue

    def stopped(self, lease: Lease) -> None:
        """A lease no longer held (released here, or removed by joint_limits.py's script)."""
        LEASES_HELD.dec()
        if lease.heartbeat is not None:
            lease.heartbeat.cancel()

    async def release(self, lease: Lease) -> None:
        self.stopped(lease)
        if lease.local:
            self._local.get(lease.key, set()).difference_update(lease.members)
            return
        try:
            await self.redis.run(lambda r: r.zrem(lease.key, *lease.members))
        except RedisUnavailable:
            # It expires by itself after ttl_s.
            log.warning("could not release a lease (Redis down); it will expire")

    async def held(self, key_id: str) -> int:
        """Live lease units for a key (all replicas)."""
        key = f"{self.prefix}{key_id}"
        script = self._count
        if script is None:
            return len(self._local.get(key, ()))
        try:
            return int(await self.redis.run(lambda _: script(keys=[key])))
        except RedisUnavailable:
            return len(self._local.get(key, ()))
