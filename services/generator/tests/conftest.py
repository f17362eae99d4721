"""Fixtures: the generator served over real gRPC on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio

from parlance.common.grpc_server import GrpcServiceHost
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.base import Engine
from parlance.generator.main import create_host
from parlance.generator.serving import GeneratorServing
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc


def chat(*turns: tuple[str, str]) -> pb.ChatInput:
    return pb.ChatInput(messages=[pb.ChatMessage(role=r, content=c) for r, c in turns])


def request(
    user: str | None = None, *, prompt: str | None = None, model: str = "", **sampling: object
) -> pb.GenerateRequest:
    """A request with one user turn (or a raw prompt) and the given sampling parameters."""
    message = pb.GenerateRequest(model=model, sampling=pb.SamplingParams(**sampling))
    if prompt is not None:
        message.prompt = prompt
    else:
        message.chat.CopyFrom(chat(("user", user or "")))
    return message


@dataclass
class RunningGenerator:
    host: GrpcServiceHost
    serving: GeneratorServing
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub

    # Builders for tests that drive the stub themselves (conftest is not importable).
    request = staticmethod(request)
    chat = staticmethod(chat)

    async def aclose(self) -> None:
        await self.channel.close()
        await self.host.stop()

    @property
    def engine(self) -> Engine:
        return self.serving.engine

    async def generate(
        self, user: str | None = None, *, prompt: str | None = None, **sampling: object
    ) -> Streamed:
        return Streamed(
            [r async for r in self.stub.Generate(request(user, prompt=prompt, **sampling))]
        )


def test_settings(**overrides: object) -> GeneratorSettings:
    values: dict[str, object] = {"port": 0, "metrics_port": -1, "shutdown_grace_s": 1.0}
    values.update(overrides)
    return GeneratorSettings(**values)  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]


async def serve(settings: GeneratorSettings, engine: Engine | None = None) -> RunningGenerator:
    host, serving = create_host(settings, engine)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    return RunningGenerator(
        host, serving, channel, generator_pb2_grpc.GeneratorServiceStub(channel)
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def llama() -> AsyncIterator[RunningGenerator]:
    """The real SmolLM2 GGUF through llama.cpp. Two contexts, so that tests see requests run
    side by side in different threads as well as wait in the queue."""
    running = await serve(test_settings(engine="llamacpp", pool_size=2, n_threads=1))
    yield running
    await running.aclose()


class Streamed:
    """A finished Generate stream, with accessors per choice."""

    def __init__(self, responses: list[pb.GenerateResponse]) -> None:
        self.responses = responses

    def text(self, index: int = 0) -> str:
        return "".join(d.text for r in self.responses for d in r.choices if d.index == index)

    def finish(self, index: int = 0) -> int:
        reasons = [d.finish_reason for r in self.responses for d in r.choices if d.index == index]
        return [r for r in reasons if r][-1]

    def tokens(self, index: int | None = None) -> int:
        return sum(
            d.token_count
            for r in self.responses
            for d in r.choices
            if index is None or d.index == index
        )

    @property
    def usage(self) -> pb.Usage:
        assert self.responses[-1].HasField("usage"), "the last message carries usage"
        assert not any(r.HasField("usage") for r in self.responses[:-1])
        return self.responses[-1].usage


@pytest.fixture
def test_settings_factory() -> Callable[..., GeneratorSettings]:
    return test_settings


@pytest.fixture
def serve_generator() -> Callable[..., Awaitable[RunningGenerator]]:
    """Starts a generator; the test closes it with `await running.aclose()`."""
    return serve
