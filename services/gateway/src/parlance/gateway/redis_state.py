"""The gateway's Redis connection, with the outage policy of docs/ARCHITECTURE.md.

When Redis does not answer, features fall back (cache off, per-process limits) instead of
failing requests; the fallback is logged once, shown by a gauge, and Redis is retried after a
short back-off so that recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

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


class RedisCallFailed(RedisUnavailable):
    """The call was tried and failed: a command that was sent may have run in Redis all the
    same (its reply lost to a timeout). The plain RedisUnavailable: nothing was sent."""


def redacted_url(url: str) -> str:
    """The URL as it may be logged: its password (redis://:secret@host) replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisState:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client: redis.Redis | None = (
            redis.Redis.from_url(
                url,
                socket_connect_timeout=0.5,
                socket_timeout=1.0,
                health_check_interval=15,
                decode_responses=False,
            )
            if url
            else None
        )
        # Bounds the commands in flight, hence the pool's connections. Unbounded, a burst of
        # a hundred callers opened a hundred connections at once; on a busy event loop those
        # connects overran the connect timeout and tripped the fallback (with "local" limits
        # letting more requests through than the limit) while Redis was healthy. A semaphore
        # rather than a BlockingConnectionPool: its waiters are served in order, the pool's
        # can starve behind callers that arrive later and then fail after its timeout.
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._down_until = 0.0
        self._fallback_logged = False
        if self.client is None:
            log.warning("REDIS_URL is empty: response cache off, rate limits per process only")
            REDIS_FALLBACK.set(1)

    @property
    def usable(self) -> bool:
        return self.client is not None and time.monotonic() >= self._down_until

    def back_in_s(self) -> float:
        """Seconds until Redis is tried again after a failure (0: it is tried now)."""
        return max(0.0, self._down_until - time.monotonic())

    async def run(self, op: Callable[[redis.Redis], Awaitable[T]]) -> T:
        """Runs `op` against Redis; raises RedisUnavailable (and enters fallback) on failure."""
        if self.client is None or not self.usable:
            raise RedisUnavailable()
        async with self._slots:
            if not self.usable:  # it failed while this caller waited
                raise RedisUnavailable()
            return await self._run(self.client, op)

    async def _run(self, client: redis.Redis, op: Callable[[redis.Redis], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            result = await op(client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            REDIS_ERRORS.inc()
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            REDIS_FALLBACK.set(1)
            if not self._fallback_logged:
                log.warning("Redis unreachable (%s): using per-process fallbacks", exc)
                self._fallback_logged = True
            raise RedisCallFailed() from exc
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
