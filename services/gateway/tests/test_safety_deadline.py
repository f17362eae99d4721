"""The safety client's deadline grows with the text it sends and with the text it sent before
and has no answer for yet (clients/safety.py): the default MiniLM classifier needs seconds for
a long prompt on a small CPU, and safety scores calls in order; neither must be a 503."""

from __future__ import annotations

import asyncio

import grpc

from parlance.gateway.clients.safety import (
    CLASSIFIER_CHARS_PER_S,
    MAX_QUEUE_WAIT_S,
    SafetyClient,
    classify_deadline,
)
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc
from parlance.testing.servicers import serving


def test_short_texts_keep_the_configured_deadline() -> None:
    assert classify_deadline(5.0, ["Hello there."]) < 5.01


def test_long_texts_get_time_in_proportion() -> None:
    texts = ["x" * 100_000, "y" * 100_000]
    assert classify_deadline(5.0, texts) == 5.0 + 200_000 / CLASSIFIER_CHARS_PER_S
    # The gateway's largest chat input (200,000 characters) gets well over the base 5 s.
    assert classify_deadline(5.0, texts) > 60


def test_text_sent_before_and_not_answered_yet_adds_its_time_up_to_a_limit() -> None:
    # Safety scores calls in order: 48 concurrent chats' prompts wait for each other.
    base = classify_deadline(5.0, ["Hello there."])
    ahead = classify_deadline(5.0, ["Hello there."], ahead_chars=20_000)
    assert ahead == base + 20_000 / CLASSIFIER_CHARS_PER_S
    assert classify_deadline(5.0, ["Hello there."], ahead_chars=10**9) == base + MAX_QUEUE_WAIT_S


class HoldingSafety(safety_pb2_grpc.SafetyServiceServicer):
    """Test double of the safety service: records the time each call has left (its deadline,
    as gRPC carried it) and holds the calls of long texts until `release` is set, as the real
    service, busy with them, answers the calls behind them only later."""

    def __init__(self) -> None:
        self.remaining_s: dict[str, float] = {}
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def Classify(
        self, request: safety_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.ClassifyResponse:
        remaining = context.time_remaining()
        assert remaining is not None
        self.remaining_s[request.texts[0][:8]] = remaining
        if len(request.texts[0]) > 1_000:
            self.holding.set()
            await self.release.wait()
        return safety_pb2.ClassifyResponse(
            results=[safety_pb2.Classification() for _ in request.texts], model="double"
        )


async def test_a_call_behind_unanswered_text_gets_its_time_in_its_deadline() -> None:
    """Real gRPC server on port 0: the characters sent before a call and not answered yet
    reach the deadline the call carries (SafetyClient._classify), and leave it once answered."""
    servicer = HoldingSafety()
    async with serving(safety_pb2_grpc.add_SafetyServiceServicer_to_server, servicer) as address:
        client = SafetyClient(address, timeout_s=1.0, retry_after_s=1)
        direction = safety_pb2.DIRECTION_INPUT
        try:
            # 20,000 characters ahead: 10 s of the slowest classifier's time.
            long = asyncio.create_task(client.classify(["long    " + "x" * 19_992], direction))
            await asyncio.wait_for(servicer.holding.wait(), 10)
            await client.classify(["behind  it"], direction)
            servicer.release.set()
            await long
            await client.classify(["after   it"], direction)
        finally:
            await client.close()
    queued_s = 20_000 / CLASSIFIER_CHARS_PER_S
    # Its own 1 s and 10 characters, plus the 10 s of the long call ahead of it (less the
    # little time the call took to arrive); without the queue it would have at most ~1 s.
    assert servicer.remaining_s["behind  "] > 1.0 + queued_s / 2
    assert servicer.remaining_s["long    "] > 1.0 + queued_s / 2  # its own text's time
    # Once the long call is answered, its characters no longer count (about its own 1 s;
    # gRPC's deadline is not exact to the millisecond).
    assert servicer.remaining_s["after   "] < 2.0
