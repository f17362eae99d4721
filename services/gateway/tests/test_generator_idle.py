"""The generator client's idle timeout (clients/generator.py) counts only the time spent
waiting on the generator: a slow HTTP reader, which keeps the stream suspended between two
messages, is not a silent generator. Real gRPC server on port 0; its servicer is a test double
that streams scripted messages with scripted pauses. Timeouts are a fraction of a second here
(120 s in production)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from parlance.gateway import errors
from parlance.gateway.clients.generator import GeneratorTargetClient
from parlance.generator.v1 import generator_pb2, generator_pb2_grpc
from parlance.testing.servicers import serving

IDLE_S = 0.3


class PacedGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """Test double: Generate streams one message per entry of `pauses`, each after sleeping
    that many seconds (the generator's silence before it)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        for i, pause in enumerate(self.pauses):
            await asyncio.sleep(pause)
            delta = generator_pb2.ChoiceDelta(index=0, text=f"word{i} ")
            yield generator_pb2.GenerateResponse(choices=[delta], model="paced")


@pytest.fixture
async def served() -> AsyncIterator[tuple[PacedGenerator, GeneratorTargetClient]]:
    servicer = PacedGenerator()
    add = generator_pb2_grpc.add_GeneratorServiceServicer_to_server
    async with serving(add, servicer) as address:
        client = GeneratorTargetClient(
            address, timeout_s=30.0, retry_after_s=1, idle_timeout_s=IDLE_S
        )
        yield servicer, client
        await client.close()


async def _read(client: GeneratorTargetClient, reader_pause_s: float) -> list[str]:
    """The stream's texts, read by a consumer that takes `reader_pause_s` over each message
    (an HTTP client reading slowly: the response generator waits at its `yield`)."""
    texts = []
    request = generator_pb2.GenerateRequest(request_id="idle-test", prompt="hi")
    async for response in client.generate(request):
        texts.append(response.choices[0].text)
        await asyncio.sleep(reader_pause_s)
    return texts


async def test_a_slow_reader_is_not_an_idle_generator(
    served: tuple[PacedGenerator, GeneratorTargetClient],
) -> None:
    servicer, client = served
    # The generator sends at once; the reader holds each message 4 idle timeouts long.
    servicer.pauses = [0.0] * 4
    texts = await _read(client, reader_pause_s=4 * IDLE_S)
    assert texts == [f"word{i} " for i in range(4)]


async def test_only_the_waits_on_the_generator_count(
    served: tuple[PacedGenerator, GeneratorTargetClient],
) -> None:
    """Each silence of the generator is under the timeout; added to the reader's time over
    the message before it, each is over it."""
    servicer, client = served
    servicer.pauses = [0.0] + [IDLE_S / 2] * 3
    texts = await _read(client, reader_pause_s=IDLE_S)
    assert len(texts) == 4


async def test_a_silent_generator_still_ends_the_stream(
    served: tuple[PacedGenerator, GeneratorTargetClient],
) -> None:
    servicer, client = served
    # Silent for 10 idle timeouts after the second message; the reader is slow too.
    servicer.pauses = [0.0, 0.0, 10 * IDLE_S, 0.0]
    texts: list[str] = []
    with pytest.raises(errors.APIError) as raised:
        request = generator_pb2.GenerateRequest(request_id="idle-test", prompt="hi")
        async for response in client.generate(request):
            texts.append(response.choices[0].text)
            await asyncio.sleep(2 * IDLE_S)
    assert raised.value.status == 503
    assert "stopped responding" in str(raised.value.message)
    assert texts == ["word0 ", "word1 "]
