"""Health reports NOT_SERVING until the classifier has loaded, SERVING after."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parlance.safety.classifier.profanity import ProfanityClassifier
from parlance.safety.config import SafetySettings
from parlance.safety.main import build_host, build_serving
from parlance.safety.servicer import SERVICE_NAME
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GatedProfanityClassifier(ProfanityClassifier):
    """The real classifier, whose load first waits for the test: the profanity model loads
    once per process and instantly after that, too fast to observe the window before ready."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate
        self.loading = asyncio.Event()

    async def load(self) -> None:
        self.loading.set()
        await self.gate.wait()
        await super().load()


async def check(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return response.status


async def test_health_serving_after_load(safety) -> None:
    assert await check(safety.channel) == SERVING
    assert await check(safety.channel, SERVICE_NAME) == SERVING


async def test_not_serving_until_the_classifier_is_loaded() -> None:
    gate = asyncio.Event()
    settings = SafetySettings(host="127.0.0.1", port=0, metrics_port=-1, shutdown_grace_s=1.0)
    classifier = GatedProfanityClassifier(gate)
    host = build_host(settings, build_serving(settings, classifier))
    starting = asyncio.create_task(host.start())
    # start() binds the port before it runs the start-up hook that loads the model.
    await classifier.loading.wait()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        assert await check(channel) == NOT_SERVING
        assert await check(channel, SERVICE_NAME) == NOT_SERVING
        stub = safety_pb2_grpc.SafetyServiceStub(channel)
        request = safety_pb2.ClassifyRequest(texts=["hello"], direction=safety_pb2.DIRECTION_INPUT)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await stub.Classify(request, timeout=5)
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE

        gate.set()
        await starting
        assert await check(channel) == SERVING
        assert await check(channel, SERVICE_NAME) == SERVING
        assert len((await stub.Classify(request, timeout=5)).results) == 1
    finally:
        gate.set()
        await starting
        await channel.close()
        await host.stop()
