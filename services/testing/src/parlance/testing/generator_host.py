"""The real generator service (its host, over real gRPC on a free port) serving the models a
test names, and a stub on it (tests of the generator's engines as clients see them) or the
gateway's own GeneratorClient and ModelRegistry on it (tests of the gateway's parts that call
it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
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


@dataclass
class ServedGenerator:
    host: Any
    client: Any  # parlance.gateway.clients.GeneratorClient
    registry: Any  # parlance.gateway.models.ModelRegistry


@asynccontextmanager
async def gateway_generator(models: list[dict[str, Any]]) -> AsyncIterator[ServedGenerator]:
    """A generator serving `models`, reached through the gateway's GeneratorClient (listed
    before this yields) and a ModelRegistry on it."""
    from parlance.gateway.clients import GeneratorClient
    from parlance.gateway.models import ModelRegistry
    from parlance.generator.config import GeneratorSettings
    from parlance.generator.main import create_host

    settings = GeneratorSettings(
        port=0, metrics_port=-1, shutdown_grace_s=1.0, models=json.dumps(models)
    )
    host, _ = create_host(settings)
    await host.start()
    client = GeneratorClient(f"127.0.0.1:{host.port}", timeout_s=30.0, retry_after_s=1)
    try:
        await client.wait_listed(30.0)
        yield ServedGenerator(host, client, ModelRegistry(client))
    finally:
        await client.close()
        await host.stop()
