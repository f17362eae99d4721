"""The gateway's Redis connection, with the outage policy of ARCHITECTURE.md.

When Redis does not answer, features fall back (cache off, per-process limits) instead of
failing requests; the fallback is logged once, shown by a gauge, and Redis is retried after a
short back-off so that recovery needs no restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from parlance.gateway.metrics import REDIS_ERRORS, REDIS_FALLBACK, REDIS_LATENCY

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long to skip Redis after a failure before trying it again.
RETRY_AFTER_FAILURE_S = 2.0
# Connections to Redis per gateway process (each carries one command at a time).
MAX_CONNECTIONS = 32


class RedisUnavailable(Exception):
    pass


class RedisState:
    def __init__(self, url: str) -> None:
        self.url = url
        # A bounded pool that callers wait on: an unbounded one opens a connection per
        # concurrent caller, and a burst of a hundred connects on a busy event loop overran
        # the connect timeout, which tripped the fallback (and, with "local" limits, let
        # more requests through than the limit) while Redis was perfectly healthy.
        self.client: redis.Redis | None = (
            redis.Redis.from_pool(  # from_pool: aclose() closes the pool too
                redis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=MAX_CONNECTIONS,
                    timeout=1.0,
                    socket_connect_timeout=0.5,
                    socket_timeout=1.0,
                    health_check_interval=15,
                    decode_responses=False,
                )
            )
            if url
            else None
        )
        self._down_until = 0.0
        self._fallback_logged = False
        if self.client is None:
            log.warning("REDIS_URL is empty: response cache off, rate limits per process only")
            REDIS_FALLBACK.set(1)

    @property
    def usable(self) -> bool:
        return self.client is not None and time.monotonic() >= self._down_until

    async def run(self, op: Callable[[redis.Redis], Awaitable[T]]) -> T:
        """Runs `op` against Redis; raises RedisUnavailable (and enters fallback) on failure."""
        if self.client is None or not self.usable:
            raise RedisUnavailable()
        started = time.perf_counter()
        try:
            result = await op(self.client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            REDIS_ERRORS.inc()
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            REDIS_FALLBACK.set(1)
            if not self._fallback_logged:
                log.warning("Redis unreachable (%s): using per-process fallbacks", exc)
                self._fallback_logged = True
            raise RedisUnavailable() from exc
        REDIS_LATENCY.observe(time.perf_counter() - started)
        if self._fallback_logged:
            log.warning("Redis reachable again: fallbacks off")
            self._fallback_logged = False
        REDIS_FALLBACK.set(0)
        return result

    async def ping(self) -> bool:
        try:
            return bool(await self.run(lambda r: r.ping()))
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
