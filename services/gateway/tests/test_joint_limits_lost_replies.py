"""A joint limits script whose reply was lost after Redis ran it (joint_limits.py,
key_limits.py): the gateway cannot tell whether it ran, and falls back to the limits one by
one (the Redis-down policy). Neither a request's admission nor its settlement may then be
applied a second time: a lost admission is given back in Redis once Redis answers again
(whether its request was refused, settled meanwhile or still runs), a lost settlement is not
repeated. Real redis-py against a real redis-server of the test's own;
the lost reply is a real socket timeout, made by a test double of the network between them,
`ReplyHoldingProxy` (parlance.testing.redis_proxy): a TCP proxy that holds back Redis's reply
to one command (which Redis ran) past the client's socket timeout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as redis

from parlance.gateway import errors, redis_state
from parlance.gateway.auth import KeyLimits as Limits
from parlance.gateway.auth import Principal
from parlance.gateway.config import GatewaySettings
from parlance.gateway.joint_limits import ADMIT_LUA, SETTLE_LUA, AdmissionLost, JointLimits
from parlance.gateway.key_limits import KeyLimits
from parlance.gateway.leases import ConcurrencyLeases, Lease
from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState
from parlance.testing import RedisProcess
from parlance.testing.redis_proxy import ReplyHoldingProxy, script_sha

# Tokens a minute: GCRA gives one back every 0.6 s, so the counts below allow for seconds.
TPM = 100


@dataclass
class Proxied:
    proxy: ReplyHoldingProxy
    state: RedisState
    limiter: RateLimiter
    leases: ConcurrencyLeases
    caller: Principal
    # Straight to Redis, past the proxy and the client's back-off.
    direct: redis.Redis

    def limits(
        self, estimate: int, concurrent: int = 3, limiter: RateLimiter | None = None
    ) -> KeyLimits:
        settings = GatewaySettings(tpm_limit=TPM, max_concurrent_per_key=concurrent, lease_ttl_s=30)
        return KeyLimits(settings, limiter or self.limiter, self.leases, self.caller, estimate)

    async def units_in_redis(self) -> int:
        """The key's lease units in Redis, read directly (also within the back-off)."""
        return int(await self.direct.zcard(f"{self.leases.prefix}{self.caller.key_id}"))

    async def no_units_in_redis(self) -> bool:
        return await self.units_in_redis() == 0

    async def back(self) -> None:
        """Waits out the back-off after the failure: Redis answers again."""
        await asyncio.sleep(redis_state.RETRY_AFTER_FAILURE_S)
        assert self.state.usable

    async def remaining(self) -> int:
        peek = await self.limiter.peek("tpm", self.caller.key_id, TPM)
        assert peek is not None
        return peek.remaining

    def remaining_in_process(self) -> int:
        """What the per-process fallback's TPM limit has left for the key."""
        key = f"{self.limiter.prefix}tpm:{self.caller.key_id}"
        return self.limiter.local.decide(key, 60_000, TPM, 0)[1]


@pytest.fixture
async def proxied(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Proxied]:
    monkeypatch.setattr(redis_state, "RETRY_AFTER_FAILURE_S", 0.2)
    direct = redis.Redis.from_url(redis_process.url)
    # Loaded beforehand, so that the first EVALSHA runs the script (not NOSCRIPT, then load).
    for script in (ADMIT_LUA, SETTLE_LUA):
        await direct.script_load(script)
    proxy = ReplyHoldingProxy(redis_process.port)
    state = RedisState(await proxy.start())
    caller = Principal("user", uuid.uuid4().hex[:12], Limits())
    leases = ConcurrencyLeases(state, ttl_s=30)
    limiter = RateLimiter(state)
    yield Proxied(proxy, state, limiter, leases, caller, direct)
    await JointLimits.of(limiter, leases).close()
    await state.close()
    await direct.aclose()
    await proxy.stop()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Until `check()` holds; fails after `timeout_s` (well within the lease's 30 s TTL, after
    which Redis would have dropped the lease by itself)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not given back in time"
        await asyncio.sleep(0.05)


async def test_a_lost_admission_is_given_back_once_redis_answers(proxied: Proxied) -> None:
    """The request goes on under the per-process limits; once Redis answers again, the lost
    admission's lease and tokens leave Redis (it settles later, in the process, where its
    tokens were reserved: not in Redis)."""
    other = proxied.limits(estimate=20)
    await other.take({})  # another request of the key, in Redis: 20 tokens and a unit
    limits = proxied.limits(estimate=30)
    proxied.proxy.marker = script_sha(ADMIT_LUA)
    await limits.take({})
    assert proxied.proxy.held == 1
    assert limits.lease is not None and limits.lease.local  # taken under the fallback
    assert 70 <= proxied.remaining_in_process() < 80  # its 30 reserved in the process
    assert await proxied.units_in_redis() == 2  # the lost admission ran: its lease is there
    await proxied.back()
    key_id = proxied.caller.key_id

    async def given_back() -> bool:
        return await proxied.leases.held(key_id) == 1  # the other request's

    await eventually(given_back)
    # The other request's 20 only (not the lost 30 too).
    assert 80 <= await proxied.remaining() < 90
    await limits.settle_used(10)
    assert await proxied.leases.held(key_id) == 1
    assert 80 <= await proxied.remaining() < 90  # nothing given back twice
    assert proxied.remaining_in_process() >= 90  # 10 used, reconciled in the process
    await other.settle_used(20)


async def test_a_lost_admission_settled_within_the_back_off_is_given_back(
    proxied: Proxied,
) -> None:
    """A key allowed one request at a time: its request settles while Redis is still skipped
    after the lost reply. Before, the undo failed then and was dropped, and the lease locked
    the key out in Redis for the lease's TTL (30 s)."""
    limits = proxied.limits(estimate=30, concurrent=1)
    proxied.proxy.marker = script_sha(ADMIT_LUA)
    await limits.take({})
    assert proxied.proxy.held == 1 and limits.lease is not None and limits.lease.local
    await limits.settle_used(10)  # within the back-off
    assert not proxied.state.usable
    assert await proxied.units_in_redis() == 1  # still taken in Redis
    await eventually(proxied.no_units_in_redis)
    assert await proxied.remaining() >= TPM - 1  # its 30 tokens too
    after = proxied.limits(estimate=30, concurrent=1)
    await after.take({})  # admitted in Redis: the key is not locked out
    assert after.lease is not None and not after.lease.local
    await after.settle_used(30)


async def test_a_request_refused_after_a_lost_admission_gives_it_back(proxied: Proxied) -> None:
    """Redis-down policy "closed": after the lost reply the request is refused (503) in take();
    what its admission took in Redis is given back all the same."""
    closed = RateLimiter(proxied.state, "closed")
    limits = proxied.limits(estimate=30, concurrent=1, limiter=closed)
    proxied.proxy.marker = script_sha(ADMIT_LUA)
    with pytest.raises(redis_state.RedisUnavailable):
        await limits.take({})
    assert proxied.proxy.held == 1
    assert await proxied.units_in_redis() == 1  # taken in Redis
    await eventually(proxied.no_units_in_redis)
    assert await proxied.remaining() >= TPM - 1


async def test_a_request_refused_by_the_local_limits_after_a_lost_admission_gives_it_back(
    proxied: Proxied,
) -> None:
    """Redis-down policy "local": after the lost reply the per-process limiter refuses (429)."""
    key = f"{proxied.limiter.prefix}tpm:{proxied.caller.key_id}"
    proxied.limiter.local.decide(key, 60_000, TPM, 80)  # the process reserved 80 before
    limits = proxied.limits(estimate=30, concurrent=1)
    proxied.proxy.marker = script_sha(ADMIT_LUA)
    with pytest.raises(errors.APIError) as refused:
        await limits.take({})
    assert refused.value.status == 429
    assert proxied.proxy.held == 1
    assert await proxied.units_in_redis() == 1
    await eventually(proxied.no_units_in_redis)
    assert await proxied.remaining() >= TPM - 1


async def test_a_lost_settlement_is_not_applied_again(proxied: Proxied) -> None:
    limits = proxied.limits(estimate=30)
    await limits.take({})
    assert limits.lease is not None and not limits.lease.local
    proxied.proxy.marker = script_sha(SETTLE_LUA)
    await limits.settle_used(90)  # 60 more than the estimate
    assert proxied.proxy.held == 1 and limits.lease is None
    await proxied.back()
    assert await proxied.leases.held(proxied.caller.key_id) == 0
    assert 10 <= await proxied.remaining() < 20  # 90 charged, once
    # Not in the process either (before: the 60 again, in the fallback's limiter).
    assert proxied.remaining_in_process() == TPM


async def test_giving_back_an_admission_that_did_not_run_gives_back_nothing(
    proxied: Proxied,
) -> None:
    """undo() of an admission that never reached Redis (its lease is not there) leaves the
    key's tokens alone; undo() of one that ran gives back once, however often asked."""
    joint = JointLimits.of(proxied.limiter, proxied.leases)
    key_id = proxied.caller.key_id
    admitted = [await joint.admit(key_id, TPM, cost, 3, 1) for cost in (20, 30)]
    leases = [a.lease for a in admitted if a.lease is not None]
    assert len(leases) == 2
    for lease in leases:
        lease.heartbeat.cancel()  # type: ignore[union-attr]
    never = Lease(leases[1].key, uuid.uuid4().hex, local=False)
    await joint.undo(key_id, TPM, AdmissionLost(never), 30)
    assert 50 <= await proxied.remaining() < 60
    for _ in range(2):
        await joint.undo(key_id, TPM, AdmissionLost(leases[1]), 30)
    assert 80 <= await proxied.remaining() < 90  # the first one's 20 stay
    assert await proxied.leases.held(key_id) == 1


async def test_shutdown_cancels_a_give_back_still_waiting(proxied: Proxied) -> None:
    limits = proxied.limits(estimate=30)
    proxied.proxy.marker = script_sha(ADMIT_LUA)
    await limits.take({})
    joint = JointLimits.of(proxied.limiter, proxied.leases)
    (waiting,) = joint._giving_back
    await joint.close()
    assert waiting.cancelled() and not joint._giving_back
    await proxied.back()
    assert await proxied.units_in_redis() == 1  # left to its TTL
