"""A TPM charge or refund (RateLimiter.adjust) of a reservation held in Redis that Redis did
not confirm: down, or its reply lost after Redis ran it. It is never applied to the
per-process limiter instead: that one does not hold the reservation, and a lost reply may
have applied it in Redis already, so the process would count it a second time. Real redis-py
against a real redis-server of the test's own; the lost reply is a real socket timeout
(parlance.testing.redis_proxy)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from parlance.gateway import redis_state
from parlance.gateway.metrics import RATE_LIMIT_ADJUSTMENTS_LOST
from parlance.gateway.ratelimit import ADJUST_LUA, GCRA_LUA, RateLimiter
from parlance.gateway.redis_state import RedisState
from parlance.testing import RedisProcess
from parlance.testing.redis_proxy import ReplyHoldingProxy, script_sha

TPM = 100


@pytest.fixture
async def proxied(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ReplyHoldingProxy, RedisState]]:
    monkeypatch.setattr(redis_state, "RETRY_AFTER_FAILURE_S", 0.2)
    direct = redis.Redis.from_url(redis_process.url)
    # Loaded beforehand, so that the first EVALSHA runs the script (not NOSCRIPT, then load).
    for script in (GCRA_LUA, ADJUST_LUA):
        await direct.script_load(script)
    await direct.aclose()
    proxy = ReplyHoldingProxy(redis_process.port)
    state = RedisState(await proxy.start())
    yield proxy, state
    await state.close()
    await proxy.stop()


def in_process(limiter: RateLimiter, subject: str) -> int:
    """What the per-process fallback's TPM limit has left for `subject`."""
    return limiter.local.decide(f"{limiter.prefix}tpm:{subject}", 60_000, TPM, 0)[1]


async def in_redis(limiter: RateLimiter, subject: str) -> int:
    peek = await limiter.peek("tpm", subject, TPM)
    assert peek is not None
    return peek.remaining


def lost() -> float:
    return RATE_LIMIT_ADJUSTMENTS_LOST.labels("tpm")._value.get()


async def test_a_lost_charge_is_not_charged_again_in_the_process(
    proxied: tuple[ReplyHoldingProxy, RedisState],
) -> None:
    proxy, state = proxied
    limiter, subject = RateLimiter(state), uuid.uuid4().hex
    reserved = await limiter.check("tpm", subject, TPM, cost=30)
    assert reserved.allowed and not reserved.local  # the reservation lives in Redis
    before = lost()
    proxy.marker = script_sha(ADJUST_LUA)
    await limiter.adjust("tpm", subject, TPM, 40, local=False)  # used 40 more
    assert proxy.held == 1  # Redis ran it; its reply was lost
    # Before: the 40 charged again in the process, which held no reservation (60 left).
    assert in_process(limiter, subject) == TPM
    assert lost() == before + 1
    await asyncio.sleep(redis_state.RETRY_AFTER_FAILURE_S)
    # 70 charged in Redis (30 left, plus one token back every 0.6 s since): the lost
    # charge did run there.
    assert 30 <= await in_redis(limiter, subject) < 45


async def test_a_refund_while_redis_is_skipped_is_not_given_in_the_process(
    proxied: tuple[ReplyHoldingProxy, RedisState],
) -> None:
    """Within the back-off after a failure (nothing sent): the refund of a reservation in
    Redis is dropped, not given to the process's limiter, which would then admit more than
    its own reservations allow."""
    proxy, state = proxied
    limiter, subject = RateLimiter(state), uuid.uuid4().hex
    await limiter.check("tpm", subject, TPM, cost=60)  # in Redis
    proxy.marker = script_sha(GCRA_LUA)
    # The next request of the key: its reply lost, it is reserved in the process (80).
    assert (await limiter.check("tpm", subject, TPM, cost=80)).local
    assert proxy.held == 1 and not state.usable
    assert in_process(limiter, subject) == TPM - 80
    before = lost()
    await limiter.adjust("tpm", subject, TPM, -50, local=False)  # the first one used 10
    # Before: 70 left in the process, for a refund of a reservation it never held.
    assert in_process(limiter, subject) == TPM - 80
    assert lost() == before + 1
