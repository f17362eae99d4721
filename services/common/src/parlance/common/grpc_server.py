"""The gRPC server bootstrap every service runs on.

It serves the standard health service (NOT_SERVING until the service's start-up hook has
loaded its model or database, and again while it drains), reflection, the request-id and
error interceptors, and a Prometheus /metrics endpoint; SIGTERM/SIGINT drain in-flight calls
for `shutdown_grace_s` before the shutdown hook closes the engine.
(Pattern: grpc's async_greeter_server_with_graceful_shutdown.py.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from parlance.common.config import ServiceSettings
from parlance.common.errors import ErrorInterceptor
from parlance.common.request_id import RequestIdServerInterceptor

log = logging.getLogger(__name__)

# Chat histories can be long; the gateway bounds input size well below this.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # The gateway pings every 10 s during calls to notice a frozen peer (the fault tests every
    # 1 s), and a call can go without data for long (a request queued in the engine). Accept
    # pings well below that interval, so that jitter never counts as abuse; otherwise the
    # server answers with GOAWAY "too_many_pings" and breaks those calls.
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
]

Hook = Callable[[], Awaitable[None]]


def _write_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


class GrpcServiceHost:
    """Owns one service's grpc.aio server, health state and metrics endpoint.

    `add_servicers(server)` registers the servicers and returns their full service names
    (e.g. "parlance.generator.v1.GeneratorService"), which health and reflection report.
    """

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        add_servicers: Callable[[grpc.aio.Server], Sequence[str]],
        *,
        startup: Hook | None = None,
        shutdown: Hook | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._startup = startup
        self._shutdown = shutdown
        self.server = grpc.aio.server(
            interceptors=[RequestIdServerInterceptor(), ErrorInterceptor()],
            options=SERVER_OPTIONS,
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(add_servicers(self.server))
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self.metrics_port: int | None = None
        self._stopping = asyncio.Event()

    async def set_serving(self, serving: bool) -> None:
        """Flips health for the server as a whole ("") and for each service name."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *self.service_names):
            await self.health.set(service, status)

    async def start(self) -> None:
        await self.set_serving(False)
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        await self.server.start()
        if self.settings.metrics_port >= 0:
            metrics_server, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.host
            )
            self.metrics_port = metrics_server.server_port
        log.info(
            "%s listening",
            self.name,
            extra={"grpc_port": self.port, "metrics_port": self.metrics_port},
        )
        if self.settings.port_file:
            ports = json.dumps({"grpc": self.port, "metrics": self.metrics_port})
            await asyncio.to_thread(_write_file, Path(self.settings.port_file), ports)
        if self._startup is not None:
            await self._startup()
        await self.set_serving(True)
        log.info("%s ready", self.name)

    async def stop(self) -> None:
        """Drains: NOT_SERVING first (load balancers stop sending), then the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s)
        if self._shutdown is not None:
            await self._shutdown()
        log.info("%s stopped", self.name)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop(self) -> None:
        """Returns once a stop was requested (a signal, request_stop()): lets a start-up hook
        that cannot complete keep the service up, NOT_SERVING, until then."""
        await self._stopping.wait()

    async def run_until_signal(self) -> None:
        """start(), wait for SIGTERM or SIGINT, stop()."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            await self.stop()
