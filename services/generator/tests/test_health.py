"""Health: NOT_SERVING until the engine has loaded the model, then SERVING."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parlance.generator.engine.llamacpp import LlamaCppEngine
from parlance.generator.main import SERVICE_NAME, create_host
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc


class GatedLlamaCppEngine(LlamaCppEngine):
    """The real engine whose start waits for the test, so the loading window is observable."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.gate.wait()
        await super().start()


async def test_not_serving_until_the_model_is_loaded(test_settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = test_settings_factory()
    engine = GatedLlamaCppEngine(served_model_name=settings.served_model_name)
    host, _ = create_host(settings, engine)
    starting = asyncio.create_task(host.start())
    async with asyncio.timeout(30):
        while not host.port:  # noqa: ASYNC110 (the host sets no event for "bound")
            await asyncio.sleep(0.01)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        generator = generator_pb2_grpc.GeneratorServiceStub(channel)
        for service in ("", SERVICE_NAME):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Calls that arrive before the model is loaded are told to come back.
        try:
            await generator.CountTokens(pb.CountTokensRequest(prompt="hi"))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("CountTokens answered before the model was loaded")

        engine.gate.set()
        await starting
        for service in ("", SERVICE_NAME):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        counted = await generator.CountTokens(pb.CountTokensRequest(prompt="hi"))
        assert counted.token_count > 0
    await host.stop()
