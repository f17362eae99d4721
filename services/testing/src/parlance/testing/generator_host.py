"""The real generator service (its host, over real gRPC on a free port) serving the models a
test names, and a stub on it: for tests of the generator's engines as clients see them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc


@asynccontextmanager
async def generator_stub(models: list[dict[str, Any]]) -> AsyncIterator[Any]:
    """A GeneratorServiceStub on a generator serving `models` (GENERATOR_MODELS' entries);
    the host stops on the way out."""
    # Imported here: the generator's dependencies are only needed by the suites that use it.
    from parlance.generator.config import GeneratorSettings
    from parlance.generator.main import create_host
    from parlance.generator.v1 import generator_pb2_grpc

    settings = GeneratorSettings(
        port=0, metrics_port=-1, shutdown_grace_s=1.0, models=json.dumps(models)
    )
    host, _ = create_host(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield generator_pb2_grpc.GeneratorServiceStub(channel)
    finally:
        await channel.close()
        await host.stop()
