"""Concurrency leases: at most K in-flight requests per API key, across every gateway replica.

A lease is a member of a Redis sorted set per key, scored by its expiry time. Taking one is a
single Lua script (drop expired members, count, add); a heartbeat pushes the expiry forward
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
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
"""
)
HEARTBEAT_LUA = (
    _NOW_MS
    + """
local changed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
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

    async def acquire(self, key_id: str, limit: int) -> Lease | None:
        """A lease, or None when `limit` leases are already held for this key."""
        key = f"{self.prefix}{key_id}"
        lease_id = uuid.uuid4().hex
        try:
            script = self._acquire
            if script is None:
                raise RedisUnavailable()
            ok = await self.redis.run(
                lambda _: script(keys=[key], args=[limit, lease_id, self.ttl_ms])
            )
            lease = Lease(key, lease_id, local=False) if int(ok) else None
        except RedisUnavailable:
            lease = self._acquire_local(key, lease_id, limit)
        RATE_LIMIT.labels("concurrency", "allowed" if lease else "rejected").inc()
        if lease is not None:
            LEASES_HELD.inc()
            if not lease.local:
                lease.heartbeat = asyncio.create_task(self._beat(lease))
        return lease

    def _acquire_local(self, key: str, lease_id: str, limit: int) -> Lease | None:
        if self.on_redis_down == "open":
            return Lease(key, lease_id, local=True)
        if self.on_redis_down == "closed":
            raise RedisUnavailable()
        held = self._local.setdefault(key, set())
        if len(held) >= limit:
            return None
        held.add(lease_id)
        return Lease(key, lease_id, local=True)

    async def _beat(self, lease: Lease) -> None:
        script = self._heartbeat
        assert script is not None
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self.redis.run(
                    lambda _: script(keys=[lease.key], args=[lease.lease_id, self.ttl_ms])
                )
            except RedisUnavailable:
                continue

    async def release(self, lease: Lease) -> None:
        LEASES_HELD.dec()
        if lease.heartbeat is not None:
            lease.heartbeat.cancel()
        if lease.local:
            self._local.get(lease.key, set()).discard(lease.lease_id)
            return
        try:
            await self.redis.run(lambda r: r.zrem(lease.key, lease.lease_id))
        except RedisUnavailable:
            # It expires by itself after ttl_s.
            log.warning("could not release a lease (Redis down); it will expire")

    async def held(self, key_id: str) -> int:
        """Live leases for a key (all replicas)."""
        key = f"{self.prefix}{key_id}"
        script = self._count
        if script is None:
            return len(self._local.get(key, ()))
        try:
            return int(await self.redis.run(lambda _: script(keys=[key])))
        except RedisUnavailable:
            return len(self._local.get(key, ()))
