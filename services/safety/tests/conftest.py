"""A real safety server on a free port with a real model, per test (the profanity model unless a
test asks for another: test_minilm.py runs the default, MiniLM)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from parlance.common.grpc_server import GrpcServiceHost
from parlance.safety.config import SafetySettings
from parlance.safety.main import build_host
from parlance.safety.v1 import safety_pb2_grpc

# The tests import detoxify_checkpoint (the small Detoxify checkpoint builder) as a plain module.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class RunningSafety:
    host: GrpcServiceHost
    channel: grpc.aio.Channel
    stub: safety_pb2_grpc.SafetyServiceStub


def make_settings(**overrides: Any) -> SafetySettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "shutdown_grace_s": 1.0,
        # The tests written for the former default keep it: they pin its scores.
        "classifier": "profanity",
    }
    values.update(overrides)
    return SafetySettings(**values)


@asynccontextmanager
async def running_safety(**overrides: Any) -> AsyncIterator[RunningSafety]:
    host = build_host(make_settings(**overrides))
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield RunningSafety(host, channel, safety_pb2_grpc.SafetyServiceStub(channel))
    finally:
        await channel.close()
        await host.stop()


@pytest.fixture
def safety_server() -> Callable[..., AbstractAsyncContextManager[RunningSafety]]:
    """`async with safety_server(output_thresholds={...}) as s:` starts a configured server."""
    return running_safety


@pytest.fixture
async def safety() -> AsyncIterator[RunningSafety]:
    async with running_safety() as running:
        yield running
