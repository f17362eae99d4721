"""Optional tracing: off without an endpoint (and then no OpenTelemetry import at all); on, a
trace follows a call from a gRPC client into a real GrpcServiceHost server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from parlance.common import tracing
from parlance.common.config import ServiceSettings
from parlance.common.grpc_server import GrpcServiceHost
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc


class Safety(safety_pb2_grpc.SafetyServiceServicer):
    """A servicer that answers at once: the bootstrap and the tracing are under test here."""

    async def Classify(self, request, context):
        return safety_pb2.ClassifyResponse(model="test")


def add(server: grpc.aio.Server) -> list[str]:
    safety_pb2_grpc.add_SafetyServiceServicer_to_server(Safety(), server)
    return ["parlance.safety.v1.SafetyService"]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()


def test_endpoint_settings() -> None:
    assert tracing.otlp_endpoint("gateway", {}) is None
    common = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert tracing.otlp_endpoint("gateway", common) == "http://collector:4317"
    own = {**common, "GATEWAY_OTLP_ENDPOINT": "http://gw-collector:4317"}
    assert tracing.otlp_endpoint("gateway", own) == "http://gw-collector:4317"
    assert tracing.otlp_endpoint("safety", own) == "http://collector:4317"


def test_off_imports_nothing_from_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from parlance.common import tracing, grpc_server\n"
        "assert tracing.setup('safety', {}) is False\n"
        "with tracing.span('x'):\n"
        "    tracing.record_stage('y', 0.1)\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_client_and_server_spans_share_the_trace(exporter: InMemorySpanExporter) -> None:
    host = GrpcServiceHost("test", ServiceSettings(port=0), add)
    await host.start()
    try:
        # Created after install(), as the services create theirs after setup().
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest())
            with tracing.span("request"):
                tracing.record_stage("moderation", 0.01)
                stub = safety_pb2_grpc.SafetyServiceStub(channel)
                await stub.Classify(safety_pb2.ClassifyRequest(texts=["hi"]))
    finally:
        await host.stop()

    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    by_kind = {span.kind: span for span in spans if span.name.endswith("/Classify")}
    client, server = by_kind[SpanKind.CLIENT], by_kind[SpanKind.SERVER]
    root = next(span for span in spans if span.name == "request")
    stage = next(span for span in spans if span.name == "moderation")
    trace_id = root.context.trace_id
    assert client.context.trace_id == server.context.trace_id == trace_id
    assert stage.context.trace_id == trace_id
    # The server's span continues the client's (propagated in the gRPC metadata).
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert client.parent is not None and client.parent.span_id == root.context.span_id
    # Health checks are not traced.
    assert not [span for span in spans if "Health" in span.name]


async def test_traced_wraps_a_coroutine(exporter: InMemorySpanExporter) -> None:
    @tracing.traced("POST /v1/chat/completions")
    async def handler(value: int) -> int:
        with tracing.span("inner"):
            return value + 1

    assert await handler(1) == 2
    spans = {span.name: span for span in exporter.get_finished_spans()}
    outer = spans["POST /v1/chat/completions"]
    assert spans["inner"].parent is not None
    assert spans["inner"].parent.span_id == outer.context.span_id
