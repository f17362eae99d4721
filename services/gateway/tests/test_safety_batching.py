"""The safety client batches the Classify calls of one event-loop turn (clients/safety.py). A
call that safety refuses for what it brought (here a text over its size limit) must fail only
its own caller: the batch is asked again call by call. Real gRPC server on port 0; its
servicer is a test double that refuses long texts as the safety service does and records the
calls it gets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from parlance.gateway import errors
from parlance.gateway.clients.safety import SafetyClient
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc
from parlance.testing.servicers import serving

LIMIT = 1_000


class SizeLimitedSafety(safety_pb2_grpc.SafetyServiceServicer):
    """Test double: flags texts containing "badword"; refuses a call holding a text over
    LIMIT characters with INVALID_ARGUMENT, as the real service refuses one over its limit."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def Classify(
        self, request: safety_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.ClassifyResponse:
        self.calls.append(len(request.texts))
        for i, text in enumerate(request.texts):
            if len(text) > LIMIT:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"texts[{i}] has {len(text)} characters"
                )
        return safety_pb2.ClassifyResponse(
            results=[safety_pb2.Classification(flagged="badword" in t) for t in request.texts],
            model="double",
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[SizeLimitedSafety, SafetyClient]]:
    servicer = SizeLimitedSafety()
    async with serving(safety_pb2_grpc.add_SafetyServiceServicer_to_server, servicer) as address:
        client = SafetyClient(address, timeout_s=5.0, retry_after_s=1)
        yield servicer, client
        await client.close()


async def test_one_callers_refused_text_fails_only_that_caller(
    served: tuple[SizeLimitedSafety, SafetyClient],
) -> None:
    servicer, client = served
    direction = safety_pb2.DIRECTION_INPUT
    good, bad, flagged = await asyncio.gather(
        client.classify(["hello there"], direction),
        client.classify(["x" * (LIMIT + 1)], direction),
        client.classify(["a badword"], direction),
        return_exceptions=True,
    )
    assert isinstance(good, safety_pb2.ClassifyResponse) and not good.results[0].flagged
    assert isinstance(flagged, safety_pb2.ClassifyResponse) and flagged.results[0].flagged
    assert isinstance(bad, errors.APIError) and bad.status == 400
    # One batched call of three, refused; then each caller alone.
    assert servicer.calls[0] == 3 and sorted(servicer.calls[1:]) == [1, 1, 1]


async def test_a_batch_of_good_calls_is_one_call(
    served: tuple[SizeLimitedSafety, SafetyClient],
) -> None:
    servicer, client = served
    results = await asyncio.gather(
        *(client.classify([f"text {i}"], safety_pb2.DIRECTION_OUTPUT) for i in range(5))
    )
    assert [len(r.results) for r in results] == [1] * 5
    assert servicer.calls == [5]


class SlowSafety(SizeLimitedSafety):
    """Test double: answers after `delay_s`; counts the calls whose caller cancelled them."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.received = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def Classify(
        self, request: safety_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.ClassifyResponse:
        self.calls.append(len(request.texts))
        self.received.set()
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return safety_pb2.ClassifyResponse(
            results=[safety_pb2.Classification() for _ in request.texts], model="double"
        )


async def test_a_batch_whose_callers_all_went_away_is_cancelled() -> None:
    # Streams stopped by their clients: safety may skip the windows nobody waits for.
    servicer = SlowSafety(delay_s=30.0)
    async with serving(safety_pb2_grpc.add_SafetyServiceServicer_to_server, servicer) as address:
        client = SafetyClient(address, timeout_s=60.0, retry_after_s=1)
        try:
            callers = [
                asyncio.create_task(client.classify([f"text {i}"], safety_pb2.DIRECTION_OUTPUT))
                for i in range(3)
            ]
            await asyncio.wait_for(servicer.received.wait(), 10)
            callers[0].cancel()
            callers[1].cancel()
            await asyncio.sleep(0.2)
            assert not servicer.cancelled.is_set()  # one caller still waits
            callers[2].cancel()
            await asyncio.wait_for(servicer.cancelled.wait(), 10)
            assert servicer.calls == [3]
        finally:
            await client.close()
