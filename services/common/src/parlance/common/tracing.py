"""Optional OpenTelemetry tracing, off by default.

On when an OTLP endpoint is set: `<SERVICE>_OTLP_ENDPOINT` (GATEWAY_OTLP_ENDPOINT, ...) or the
standard OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://otel-collector:4317 (OTLP over gRPC). Then
every gRPC client and server of the process is instrumented, so a trace follows a request from
the gateway through safety, generator and history (W3C trace context in the gRPC metadata,
next to x-request-id), and the gateway adds spans for the stages of its request flow.

Needs the `tracing` extra of parlance-common. Off, this module imports nothing from
OpenTelemetry and its helpers cost one attribute check.

Call setup() in main(), before any gRPC channel or server is created (the instrumentation wraps
their constructors), once per process (each gateway worker process calls it for itself).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Set by install(); None while tracing is off.
_tracer: Tracer | None = None
_instrumentors: list[Any] = []


def otlp_endpoint(service: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint for `service`: its own setting first, then OpenTelemetry's standard."""
    env = os.environ if environ is None else environ
    return (
        env.get(f"{service.upper()}_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )


def setup(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turns tracing on for this process if an OTLP endpoint is set; returns whether it did."""
    endpoint = otlp_endpoint(service, environ)
    if endpoint is None or _tracer is not None:
        return _tracer is not None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"{service.upper()}_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT is set but "
            "OpenTelemetry is not installed: pip install 'parlance-common[tracing]'"
        ) from exc
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still apply; this is the default name.
    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"parlance-{service}"}
    )
    provider = TracerProvider(resource=resource)
    # Batched, in a background thread: exporting never sits on a request's path; the SDK
    # flushes what is left at exit.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    log.info("tracing on", extra={"otlp_endpoint": endpoint})
    return True


def install(provider: TracerProvider) -> None:
    """Instruments gRPC (client and server, asyncio) with `provider` and makes it the source
    of the gateway's stage spans; setup() calls it, tests call it with an in-memory exporter."""
    global _tracer
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )
    from opentelemetry.instrumentation.grpc.filters import (
        any_of,
        health_check,
        negate,
        service_prefix,
    )

    # Health checks (readiness probes, every few seconds) and reflection would drown the
    # request traces.
    untraced = negate(any_of(health_check(), service_prefix("grpc.reflection.")))
    trace.set_tracer_provider(provider)
    for instrumentor in (
        GrpcAioInstrumentorClient(filter_=untraced),
        GrpcAioInstrumentorServer(filter_=untraced),
    ):
        instrumentor.instrument(tracer_provider=provider)
        _instrumentors.append(instrumentor)
    _tracer = provider.get_tracer("parlance")


def uninstall() -> None:
    """Removes the gRPC instrumentation again (tests)."""
    global _tracer
    while _instrumentors:
        _instrumentors.pop().uninstrument()
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span around a block, child of the current one; a no-op while tracing is off."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Runs an async function inside a span (checked per call: setup() runs after import)."""

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _tracer is None:
                return await function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return await function(*args, **kwargs)

        return wrapper

    return decorate


def record_stage(name: str, duration_s: float) -> None:
    """A span for a stage that just ended and took duration_s, child of the current span:
    for code that already measures its stages (the gateway's Server-Timing)."""
    if _tracer is None:
        return
    end = time.time_ns()
    _tracer.start_span(name, start_time=end - int(duration_s * 1e9)).end(end_time=end)
