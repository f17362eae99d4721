"""The TPM reservation and the lease in one Redis call (joint_limits.py), straight against a
real redis-server of the test's own: exact under concurrency, nothing charged for a refused
lease, and the settlement releases the lease and reconciles the tokens in one call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from parlance.gateway.joint_limits import JointLimits
from parlance.gateway.leases import ConcurrencyLeases
from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState
from parlance.testing import RedisProcess


@pytest.fixture
async def joint(redis_process: RedisProcess) -> AsyncIterator[JointLimits]:
    state = RedisState(redis_process.url)
    yield JointLimits(RateLimiter(state), ConcurrencyLeases(state, ttl_s=30))
    await state.close()


async def test_concurrent_admissions_get_exactly_the_lease_limit(joint: JointLimits) -> None:
    key = uuid.uuid4().hex[:12]
    admitted = await asyncio.gather(*(joint.admit(key, 1000, 10, 5, 1) for _ in range(40)))
    leased = [a.lease for a in admitted if a.lease is not None]
    assert len(leased) == 5
    assert all(a.decision.allowed for a in admitted)
    assert await joint.leases.held(key) == 5
    # Only the 5 admitted requests were charged: 50 of 1,000 tokens a minute (GCRA refills
    # ~0.02 a ms meanwhile).
    peek = await joint.limiter.peek("tpm", key, 1000)
    assert peek is not None and 950 <= peek.remaining <= 951
    for lease in leased:
        lease.heartbeat.cancel()  # type: ignore[union-attr]


async def test_refused_tokens_take_no_lease_and_weights_count(joint: JointLimits) -> None:
    key = uuid.uuid4().hex[:12]
    refused = await joint.admit(key, 100, 500, 5, 1)
    assert not refused.decision.allowed and refused.lease is None
    assert await joint.leases.held(key) == 0
    heavy = await joint.admit(key, 100, 10, 5, 4)
    assert heavy.lease is not None and await joint.leases.held(key) == 4
    second = await joint.admit(key, 100, 10, 5, 2)
    assert second.decision.allowed and second.lease is None  # 4 + 2 > 5: no tokens charged
    peek = await joint.limiter.peek("tpm", key, 100)
    assert peek is not None and peek.remaining == 90


async def test_settle_releases_and_reconciles_in_one_call(joint: JointLimits) -> None:
    key = uuid.uuid4().hex[:12]
    admitted = await joint.admit(key, 1000, 300, 2, 2)
    assert admitted.lease is not None and await joint.leases.held(key) == 2
    await joint.settle(key, 1000, admitted.lease, 120 - 300)  # used 120 of the 300 reserved
    assert await joint.leases.held(key) == 0
    assert admitted.lease.heartbeat is not None and admitted.lease.heartbeat.cancelled()
    peek = await joint.limiter.peek("tpm", key, 1000)
    assert peek is not None and 880 <= peek.remaining <= 881
