"""RateLimiter and ConcurrencyLeases straight against a real redis-server of the test's own."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from parlance.gateway.leases import ConcurrencyLeases
from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState, RedisUnavailable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A redis-server on its own port that a test can stop and start again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed")
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(200):
            if _answers(self.port):
                return
            time.sleep(0.025)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None


@pytest.fixture(scope="module")
def redis_process() -> Iterator[RedisProcess]:
    process = RedisProcess()
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def state(redis_process: RedisProcess) -> AsyncIterator[RedisState]:
    redis_state = RedisState(redis_process.url)
    yield redis_state
    await redis_state.close()


def subject() -> str:
    return uuid.uuid4().hex[:12]


@pytest.mark.parametrize("limit", [1, 7, 10, 33])
async def test_concurrent_callers_get_exactly_the_limit(state: RedisState, limit: int) -> None:
    limiter = RateLimiter(state)
    key = subject()
    decisions = await asyncio.gather(*(limiter.check("rpm", key, limit) for _ in range(100)))
    assert sum(d.allowed for d in decisions) == limit
    refused = [d for d in decisions if not d.allowed]
    assert all(d.remaining == 0 and d.retry_after_s > 0 for d in refused)
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(limit))


async def test_no_double_burst_at_the_window_edge(state: RedisState) -> None:
    """A fixed window lets N through at its end and N more at the next one's start; GCRA lets
    one more through per emission interval (period / N) after the burst, never a second N."""
    limiter = RateLimiter(state)
    key, limit, period_s = subject(), 10, 6.0
    interval_s = period_s / limit
    started = time.monotonic()
    first = await asyncio.gather(*(limiter.check("edge", key, limit, period_s) for _ in range(50)))
    assert sum(d.allowed for d in first) == limit
    await asyncio.sleep(period_s / 4)
    second = await asyncio.gather(*(limiter.check("edge", key, limit, period_s) for _ in range(50)))
    elapsed_s = time.monotonic() - started
    allowed = sum(d.allowed for d in second)
    # What came back in the time that really passed (the bound is measured, not assumed).
    assert 1 <= allowed <= elapsed_s / interval_s + 1
    assert allowed < limit
    assert all(d.retry_after_s > 0 for d in second if not d.allowed)


async def test_cost_and_refund_reconcile_tokens(state: RedisState) -> None:
    limiter = RateLimiter(state)
    key, tpm = subject(), 1000
    reserved = await limiter.check("tpm", key, tpm, cost=800)
    assert reserved.allowed and reserved.remaining == 200
    assert not (await limiter.check("tpm", key, tpm, cost=300)).allowed
    # The request used 50 tokens, not 800: the rest comes back at once.
    await limiter.adjust("tpm", key, tpm, 50 - 800)
    after = await limiter.check("tpm", key, tpm, cost=300)
    assert after.allowed
    assert 1000 - 50 - 300 - 5 <= after.remaining <= 1000 - 50 - 300


async def test_a_cost_above_the_limit_is_refused_without_charging(state: RedisState) -> None:
    limiter = RateLimiter(state)
    key = subject()
    assert not (await limiter.check("tpm", key, 100, cost=101)).allowed
    assert (await limiter.check("tpm", key, 100, cost=100)).allowed


async def test_leases_cap_concurrency_and_release(state: RedisState) -> None:
    leases = ConcurrencyLeases(state, ttl_s=30)
    key = subject()
    taken = await asyncio.gather(*(leases.acquire(key, 5) for _ in range(50)))
    held = [lease for lease in taken if lease is not None]
    assert len(held) == 5
    assert await leases.held(key) == 5
    await asyncio.gather(*(leases.release(lease) for lease in held))
    assert await leases.held(key) == 0
    assert await state.run(lambda r: r.zcard(f"parlance:lease:{key}")) == 0


async def test_unreleased_leases_expire_and_heartbeats_keep_live_ones(state: RedisState) -> None:
    key = subject()
    crashed = ConcurrencyLeases(state, ttl_s=0.6)
    lost = await crashed.acquire(key, 2)
    assert lost is not None and lost.heartbeat is not None
    lost.heartbeat.cancel()  # its gateway died: no more heartbeats, no release
    alive = ConcurrencyLeases(state, ttl_s=0.6)
    kept = await alive.acquire(key, 2)
    assert kept is not None
    await asyncio.sleep(1.5)  # > ttl: only the heartbeat keeps `kept` alive
    assert await alive.held(key) == 1
    assert await alive.acquire(key, 2) is not None  # the expired slot is free again
    await alive.release(kept)


async def test_policies_when_redis_is_unreachable() -> None:
    down = RedisState(f"redis://127.0.0.1:{_free_port()}/0")
    try:
        local = RateLimiter(down, "local")
        decisions = [await local.check("rpm", "k", 3) for _ in range(5)]
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        assert all(d.allowed for d in [await RateLimiter(down, "open").check("rpm", "k", 1)] * 3)
        with pytest.raises(RedisUnavailable):
            await RateLimiter(down, "closed").check("rpm", "k", 3)
        leases = ConcurrencyLeases(down, on_redis_down="local")
        first = await leases.acquire("k", 1)
        assert first is not None and first.local
        assert await leases.acquire("k", 1) is None
        await leases.release(first)
        assert await leases.acquire("k", 1) is not None
        with pytest.raises(RedisUnavailable):
            await ConcurrencyLeases(down, on_redis_down="closed").acquire("k", 1)
    finally:
        await down.close()


async def test_recovers_when_redis_comes_back() -> None:
    server = RedisProcess()
    server.start()
    redis_state = RedisState(server.url)
    try:
        limiter = RateLimiter(redis_state, "local")
        assert (await limiter.check("rpm", "k", 100)).allowed
        server.stop()
        assert (await limiter.check("rpm", "k", 100)).allowed  # local fallback
        assert not redis_state.usable
        server.start()
        await asyncio.sleep(2.1)  # the back-off after a failure
        assert (await limiter.check("rpm", "k", 100)).allowed
        client = aioredis.Redis.from_url(server.url)
        assert await client.exists("parlance:rl:rpm:k") == 1
        await client.aclose()
    finally:
        await redis_state.close()
        server.stop()
