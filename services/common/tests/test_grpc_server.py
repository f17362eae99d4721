"""The gRPC bootstrap: health NOT_SERVING until start-up finished, reflection, request ids,
error mapping, graceful drain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from parlance.common.config import ServiceSettings
from parlance.common.errors import InvalidArgument, split_details
from parlance.common.grpc_server import GrpcServiceHost
from parlance.common.request_id import get_request_id
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc


class EchoSafety(safety_pb2_grpc.SafetyServiceServicer):
    """A minimal servicer to exercise the bootstrap (the real safety service has its own
    tests); it reports the request id it saw and raises a domain error on demand."""

    def __init__(self) -> None:
        self.slow_arrived = asyncio.Event()

    async def Classify(self, request, context):
        if not request.texts:
            raise InvalidArgument("no texts", param="texts")
        if request.texts[0] == "slow":
            self.slow_arrived.set()
            await asyncio.sleep(0.5)
        return safety_pb2.ClassifyResponse(model=get_request_id() or "")

    async def GetClassifierInfo(self, request, context):
        raise RuntimeError("boom")


ECHO = EchoSafety()


def add(server: grpc.aio.Server) -> list[str]:
    safety_pb2_grpc.add_SafetyServiceServicer_to_server(ECHO, server)
    return ["parlance.safety.v1.SafetyService"]


async def test_health_reflection_request_id_and_errors(tmp_path: Path) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def startup() -> None:
        started.set()
        await release.wait()

    settings = ServiceSettings(port=0, metrics_port=0, port_file=str(tmp_path / "ports.json"))
    host = GrpcServiceHost("test", settings, add, startup=startup)
    start_task = asyncio.create_task(host.start())
    await started.wait()
    ports = json.loads((tmp_path / "ports.json").read_text())
    assert ports["grpc"] == host.port and ports["metrics"] == host.metrics_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="parlance.safety.v1.SafetyService")
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        release.set()
        await start_task
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.SERVING

        stub = safety_pb2_grpc.SafetyServiceStub(channel)
        reply = await stub.Classify(
            safety_pb2.ClassifyRequest(texts=["x"]), metadata=(("x-request-id", "req-42"),)
        )
        assert reply.model == "req-42"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Classify(safety_pb2.ClassifyRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert split_details(info.value.details()) == ("texts", "no texts")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetClassifierInfo(safety_pb2.GetClassifierInfoRequest())
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "boom" not in (info.value.details() or "")

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        call = reflection.ServerReflectionInfo(requests())
        response = await call.read()
        call.cancel()
        names = {s.name for s in response.list_services_response.service}
        assert "parlance.safety.v1.SafetyService" in names

        # Graceful drain: a call in flight when stop() begins still completes.
        slow = asyncio.ensure_future(stub.Classify(safety_pb2.ClassifyRequest(texts=["slow"])))
        await asyncio.wait_for(ECHO.slow_arrived.wait(), timeout=10)
        await host.stop()
        assert (await slow).model == ""
