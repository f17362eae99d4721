"""RateLimiter and ConcurrencyLeases straight against a real redis-server of the test's own."""

from __future__ import annotations

import asyncio
import gc
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from parlance.gateway.leases import ConcurrencyLeases
from parlance.gateway.ratelimit import ADJUST_LUA, CLOCK_LUA, GCRA_LUA, LocalGCRA, RateLimiter
from parlance.gateway.redis_state import (
    MAX_CONNECTIONS,
    RETRY_AFTER_FAILURE_S,
    RedisState,
    RedisUnavailable,
)
from parlance.testing import RedisProcess, free_port


@pytest.fixture
async def state(redis_process: RedisProcess) -> AsyncIterator[RedisState]:
    redis_state = RedisState(redis_process.url)
    await open_connections(redis_state)
    yield redis_state
    await redis_state.close()


async def open_connections(state: RedisState) -> None:
    """Opens the pool's connections before a test's burst. A burst on a new pool opens them
    all at once, and on a slow event loop (in the whole suite's process a garbage-collection
    pass over its heap takes long) a connect can overrun its 0.5 s timeout: the burst then
    goes to the per-process fallback, which is not what these tests measure (the policy tests
    below do)."""
    gc.collect()
    for _ in range(3):
        pings = await asyncio.gather(
            *(state.run(lambda client: client.ping()) for _ in range(MAX_CONNECTIONS)),
            return_exceptions=True,
        )
        if not any(isinstance(ping, BaseException) for ping in pings):
            return
        await asyncio.sleep(RETRY_AFTER_FAILURE_S + 0.1)
    raise AssertionError(f"redis-server at {state.client} took no connections: {pings}")


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


# --- the arithmetic, on a frozen clock ------------------------------------------------------
# A real burst spreads over a few milliseconds, and the clock moving on hides float drift. With
# the clock frozen at a real epoch (where an absolute TAT's double step is 2.4e-4 ms), every
# request of a burst lands on the same instant: the worst case, and the same one on every run.

FROZEN_NOW_MS = 1_764_286_461_234  # 2025-11-27
EXPIRY_LUA = "math.ceil(offset) + 1"  # the PX of write_state in the scripts


class FrozenScript:
    """GCRA_LUA or ADJUST_LUA on the real Redis with Redis's TIME replaced by a given ms.

    Key expiry runs on Redis's real clock, which a frozen clock does not move: an offset of a
    fraction of a millisecond would expire between two calls that are one instant apart on
    the frozen clock. So the keys are kept for an hour here."""

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        assert source.count(CLOCK_LUA) == 1 and source.count(EXPIRY_LUA) == 1
        frozen = source.replace(CLOCK_LUA, "local t = {ARGV[4], ARGV[5]}")
        self.client = client
        self.script = client.register_script(frozen.replace(EXPIRY_LUA, "3600000"))

    async def __call__(self, key: str, now_ms: int, *args: int) -> list[int]:
        seconds, millis = divmod(now_ms, 1000)
        raw = await self.script(keys=[key], args=[*args, seconds, millis * 1000])
        return self._ints(raw)

    async def burst(self, count: int, key: str, now_ms: int, *args: int) -> list[list[int]]:
        """`count` of the same call, sent in one pipeline: Redis runs them one after another,
        as `count` awaited calls, without a round trip each (12,348 round trips took minutes
        on a loaded machine)."""
        seconds, millis = divmod(now_ms, 1000)
        async with self.client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                await self.script(keys=[key], args=[*args, seconds, millis * 1000], client=pipe)
            raw = await pipe.execute()
        return [self._ints(r) for r in raw]

    @staticmethod
    def _ints(raw: Any) -> list[int]:
        return [int(x) for x in raw] if isinstance(raw, list) else [int(raw)]


@pytest.fixture
async def raw_client(redis_process: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_process.url)
    yield client
    await client.aclose()


@pytest.mark.parametrize("limit", [1, 7, 33, 1000, 12_345])
async def test_a_burst_in_one_instant_gets_exactly_the_limit_in_redis(
    raw_client: aioredis.Redis, limit: int
) -> None:
    """Before the offset format, limit 33 at this instant counted `remaining` 32, ..., 3, 2, 2,
    ... (CI saw it) and 12,345 refused requests inside the limit."""
    check = FrozenScript(raw_client, GCRA_LUA)
    key = subject()
    results = await check.burst(limit + 3, key, FROZEN_NOW_MS, 60_000, limit, 1)
    assert [r[0] for r in results] == [1] * limit + [0] * 3
    assert [r[1] for r in results[:limit]] == list(range(limit - 1, -1, -1))
    assert all(r[1] == 0 and r[3] > 0 for r in results[limit:])


@pytest.mark.parametrize("limit", [1, 7, 33, 1000, 12_345])
def test_a_burst_in_one_instant_gets_exactly_the_limit_in_process(limit: int) -> None:
    local = LocalGCRA(clock_ns=lambda: FROZEN_NOW_MS * 1_000_000)
    results = [local.decide("k", 60_000, limit, 1) for _ in range(limit + 3)]
    assert [r[0] for r in results] == [1] * limit + [0] * 3
    assert [r[1] for r in results[:limit]] == list(range(limit - 1, -1, -1))


async def test_redis_and_in_process_gcra_agree_step_by_step(raw_client: aioredis.Redis) -> None:
    """The Lua script and `gcra()` (which LocalGCRA runs) are one algorithm in two languages:
    the same random walk of costs, refunds and clock steps gives the same answers."""
    rng = random.Random(9)
    check = FrozenScript(raw_client, GCRA_LUA)
    adjust = FrozenScript(raw_client, ADJUST_LUA)
    now_ms = FROZEN_NOW_MS
    local = LocalGCRA(clock_ns=lambda: now_ms * 1_000_000)
    key, period_ms, limit = subject(), 60_000, 997
    for _ in range(3000):
        now_ms += rng.choice([0, 0, 0, 1, 7, 60, 900])
        if rng.random() < 0.1:
            delta = rng.randint(-400, 50)
            await adjust(key, now_ms, period_ms, limit, delta)
            local.adjust("k", period_ms, limit, delta)
            continue
        cost = rng.choice([0, 1, 1, 3, 40])
        in_redis = await check(key, now_ms, period_ms, limit, cost)
        assert in_redis == list(local.decide("k", period_ms, limit, cost))


async def test_a_key_in_the_absolute_format_of_earlier_versions_is_read(
    raw_client: aioredis.Redis,
) -> None:
    check = FrozenScript(raw_client, GCRA_LUA)
    key, limit = subject(), 10
    interval_ms = 60_000 / limit
    await raw_client.set(key, repr(FROZEN_NOW_MS + 3 * interval_ms), px=60_000)
    allowed, remaining, _, _ = await check(key, FROZEN_NOW_MS, 60_000, limit, 1)
    assert (allowed, remaining) == (1, limit - 4)
    written, ahead = (await raw_client.get(key)).split()
    assert int(written) == FROZEN_NOW_MS and float(ahead) == pytest.approx(4 * interval_ms)


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


# Heartbeats come every third of the time to live: a lease is lost only when one is more than
# 1 s late. With 0.6 s, one heartbeat held up by a slow connect (0.5 s timeout) or a full garbage
# collection of the suite's process could let a live lease expire.
LEASE_TTL_S = 1.5


async def test_weighted_leases_are_taken_whole_or_not_at_all(state: RedisState) -> None:
    """A best_of=k request's lease is k units (key_limits.py): granted only when k are free,
    all in one script, so that concurrent takers never overshoot the limit together."""
    leases = ConcurrencyLeases(state, ttl_s=LEASE_TTL_S)
    key = subject()
    taken = await asyncio.gather(*(leases.acquire(key, 5, weight=2) for _ in range(20)))
    held = [lease for lease in taken if lease is not None]
    assert len(held) == 2 and await leases.held(key) == 4
    assert await leases.acquire(key, 5, weight=2) is None
    one = await leases.acquire(key, 5)
    assert one is not None and await leases.held(key) == 5
    await asyncio.sleep(
        LEASE_TTL_S + 1.0
    )  # > ttl: the heartbeats keep every unit of each lease alive
    assert await leases.held(key) == 5
    await asyncio.gather(*(leases.release(lease) for lease in [*held, one]))
    assert await state.run(lambda r: r.zcard(f"parlance:lease:{key}")) == 0
    # Without Redis the per-process fallback counts units the same way.
    down = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    try:
        local = ConcurrencyLeases(down, on_redis_down="local")
        big = await local.acquire("k", 3, weight=3)
        assert big is not None and await local.held("k") == 3
        assert await local.acquire("k", 3) is None
        await local.release(big)
        assert await local.acquire("k", 3, weight=2) is not None and await local.held("k") == 2
    finally:
        await down.close()


async def test_unreleased_leases_expire_and_heartbeats_keep_live_ones(state: RedisState) -> None:
    key = subject()
    crashed = ConcurrencyLeases(state, ttl_s=LEASE_TTL_S)
    lost = await crashed.acquire(key, 2)
    assert lost is not None and lost.heartbeat is not None
    lost.heartbeat.cancel()  # its gateway died: no more heartbeats, no release
    alive = ConcurrencyLeases(state, ttl_s=LEASE_TTL_S)
    kept = await alive.acquire(key, 2)
    assert kept is not None
    await asyncio.sleep(LEASE_TTL_S + 1.0)  # > ttl: only the heartbeat keeps `kept` alive
    assert await alive.held(key) == 1
    assert await alive.acquire(key, 2) is not None  # the expired slot is free again
    await alive.release(kept)


async def test_policies_when_redis_is_unreachable() -> None:
    down = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    try:
        local = RateLimiter(down, "local")
        decisions = [await local.check("rpm", "k", 3) for _ in range(5)]
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        # Open: no limit at all while Redis is down, so three calls against a limit of 1 pass.
        open_policy = RateLimiter(down, "open")
        assert [(await open_policy.check("rpm", "k", 1)).allowed for _ in range(3)] == [True] * 3
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
