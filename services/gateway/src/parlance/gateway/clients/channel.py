"""gRPC channels of the gateway's clients, and the base every client builds on.

Each call has a deadline; only idempotent calls are retried (by gRPC's own retry policy, with
backoff, on UNAVAILABLE). gRPC failures become OpenAI-shaped errors here, in one place.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parlance.common.errors import openai_code_of, split_details
from parlance.common.request_id import outgoing_metadata
from parlance.gateway import errors
from parlance.gateway.metrics import DEPENDENCY_ERRORS, DEPENDENCY_LATENCY

log = logging.getLogger(__name__)

_MAX_MESSAGE = 32 * 1024 * 1024


def _retry_config(idempotent: list[str]) -> str:
    """Retry policy for the idempotent methods: "pkg.Service" (all of it) or
    "pkg.Service/Method"."""
    names = [
        {"service": n.split("/")[0], "method": n.split("/")[1]} if "/" in n else {"service": n}
        for n in idempotent
    ]
    return json.dumps(
        {
            # Spread calls over every address the target resolves to (dns:///generator:50051
            # with several generator replicas); gRPC's default would pin one address.
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


@dataclass(frozen=True)
class KeepAlive:
    """HTTP/2 pings during calls: a peer that stops answering them (frozen, partitioned, its
    host gone) fails the calls in flight with UNAVAILABLE after interval + timeout, instead of
    leaving them to their deadline (ten minutes for a generation). The services' servers
    accept pings this often (parlance.common.grpc_server.SERVER_OPTIONS)."""

    interval_s: float = 10.0
    timeout_s: float = 5.0


# The default of every client's `keepalive` (frozen, so one instance serves them all).
DEFAULT_KEEPALIVE = KeepAlive()


def make_channel(
    target: str, idempotent: list[str], keepalive: KeepAlive = DEFAULT_KEEPALIVE
) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _retry_config(idempotent)),
            ("grpc.keepalive_time_ms", int(keepalive.interval_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive.timeout_s * 1000)),
            # Any ping in flight (gRPC's own bandwidth probes too) times out this fast. Without
            # it, an unanswered bandwidth-probe ping postpones the keepalive ping, and a frozen
            # peer is noticed only after gRPC's default ping timeout of a minute (measured).
            ("grpc.http2.ping_timeout_ms", int(keepalive.timeout_s * 1000)),
            # Keep pinging while a call waits without data (a request queued in the engine);
            # gRPC's default stops after two such pings, which would blind the check.
            ("grpc.http2.max_pings_without_data", 0),
            # Reconnect quickly after a dependency restarts (default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            # The connect timeout (gRPC's default is 20 s): a frozen peer still accepts TCP
            # connections in its kernel but never completes the HTTP/2 handshake, and calls
            # would wait for this long before failing.
            ("grpc.min_reconnect_backoff_ms", max(1_000, int(keepalive.timeout_s * 1000))),
        ],
    )


def to_api_error(exc: grpc.aio.AioRpcError, dependency: str, retry_after_s: int) -> errors.APIError:
    """The HTTP answer for a failed call to `dependency`."""
    code = exc.code()
    param, message = split_details(exc.details())
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.service_unavailable(
            f"The {dependency} service is unavailable; retry later.", retry_after_s
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.invalid_request(message, param=param, code=openai_code_of(exc))
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.not_found(message, param=param)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return errors.APIError(409, message, param=param, code="conflict")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.APIError(
            429,
            message,
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry_after_s)},
        )
    if code == grpc.StatusCode.CANCELLED:
        return errors.service_unavailable(f"The {dependency} call was cancelled.", retry_after_s)
    log.error("%s call failed: %s %s", dependency, code.name, exc.details())
    return errors.APIError(
        500, f"The {dependency} service failed to process the request.", type="server_error"
    )


class BaseClient:
    """A client of one service over one channel to `target`: its stub, its health check, and
    unary calls with a deadline whose gRPC failures become APIError. A subclass names its
    service (dependency), the methods gRPC may retry and its stub class."""

    dependency: ClassVar[str] = ""
    # The methods gRPC retries on UNAVAILABLE: "pkg.Service" (all of it) or "pkg.Service/Method".
    idempotent: ClassVar[tuple[str, ...]] = ()
    stub_class: ClassVar[type[Any]]  # called with the channel
    stub: Any

    def __init__(
        self,
        target: str,
        timeout_s: float,
        retry_after_s: int,
        keepalive: KeepAlive = DEFAULT_KEEPALIVE,
    ) -> None:
        self.channel = make_channel(target, list(self.idempotent), keepalive)
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.stub = type(self).stub_class(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def check_health(self, timeout_s: float = 1.0) -> bool:
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _unary(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        with DEPENDENCY_LATENCY.labels(self.dependency).time():
            try:
                return await method(
                    request, timeout=timeout_s or self.timeout_s, metadata=outgoing_metadata()
                )
            except grpc.aio.AioRpcError as exc:
                DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
                raise to_api_error(exc, self.dependency, self.retry_after_s) from exc

    async def close(self) -> None:
        await self.channel.close()
