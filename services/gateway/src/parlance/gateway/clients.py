"""gRPC clients of the generator, safety and history services.

Each call has a deadline; only idempotent calls are retried (by gRPC's own retry policy, with
backoff, on UNAVAILABLE). gRPC failures become OpenAI-shaped errors here, in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parlance.common.errors import split_details
from parlance.common.request_id import outgoing_metadata
from parlance.gateway import errors
from parlance.gateway.metrics import DEPENDENCY_ERRORS, DEPENDENCY_LATENCY
from parlance.generator.v1 import generator_pb2, generator_pb2_grpc
from parlance.history.v1 import history_pb2, history_pb2_grpc
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc

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


def make_channel(
    target: str, idempotent: list[str], keepalive: KeepAlive = KeepAlive()
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
        return errors.invalid_request(message, param=param)
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


class _Client:
    dependency = ""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float, retry_after_s: int) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._health = health_pb2_grpc.HealthStub(channel)

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


class GeneratorClient(_Client):
    dependency = "generator"

    def __init__(
        self,
        target: str,
        timeout_s: float,
        retry_after_s: int,
        idle_timeout_s: float = 120.0,
        keepalive: KeepAlive = KeepAlive(),
    ) -> None:
        super().__init__(
            # Only ListModels and CountTokens are retried. Generate is not: a generator that
            # failed it (keepalive noticed it frozen, say) would only be asked again to no
            # avail, and the client is waiting; the 503 tells it when to come back.
            make_channel(
                target,
                [
                    "parlance.generator.v1.GeneratorService/ListModels",
                    "parlance.generator.v1.GeneratorService/CountTokens",
                ],
                keepalive,
            ),
            timeout_s,
            retry_after_s,
        )
        # Longest silence between two messages of a generation once it has started: a live
        # but stuck engine ends the stream instead of holding the client until the deadline.
        # (Before the first message a request may wait in the engine's queue; the deadline
        # and keepalive cover that part.)
        self.idle_timeout_s = idle_timeout_s
        self.stub = generator_pb2_grpc.GeneratorServiceStub(self.channel)

    async def list_models(self) -> generator_pb2.ListModelsResponse:
        return await self._unary(self.stub.ListModels, generator_pb2.ListModelsRequest(), 5.0)

    async def count_tokens(
        self, request: generator_pb2.CountTokensRequest
    ) -> generator_pb2.CountTokensResponse:
        return await self._unary(self.stub.CountTokens, request, 10.0)

    async def generate(
        self, request: generator_pb2.GenerateRequest
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Streams the generation. Closing the iterator (or cancelling the consuming task)
        cancels the gRPC call, which aborts the engine request."""
        call = self.stub.Generate(request, timeout=self.timeout_s, metadata=outgoing_metadata())
        try:
            responses = aiter(call)
            yield await anext(responses)
            while True:
                # asyncio.timeout costs a timer handle per message; wait_for would also wrap
                # every read in a task of its own.
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        response = await anext(responses)
                except TimeoutError:
                    DEPENDENCY_ERRORS.labels(self.dependency, "IDLE_TIMEOUT").inc()
                    log.warning(
                        "generator sent nothing for %.1f s: stream ended", self.idle_timeout_s
                    )
                    raise errors.service_unavailable(
                        f"The generator stopped responding for {self.idle_timeout_s:g} s.",
                        self.retry_after_s,
                    ) from None
                yield response
        except StopAsyncIteration:
            return
        except grpc.aio.AioRpcError as exc:
            DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc
        finally:
            call.cancel()


class SafetyClient(_Client):
    dependency = "safety"

    def __init__(
        self, target: str, timeout_s: float, retry_after_s: int, keepalive: KeepAlive = KeepAlive()
    ) -> None:
        super().__init__(
            make_channel(target, ["parlance.safety.v1.SafetyService"], keepalive),
            timeout_s,
            retry_after_s,
        )
        self.stub = safety_pb2_grpc.SafetyServiceStub(self.channel)

    async def classify(
        self, texts: list[str], direction: safety_pb2.Direction.ValueType
    ) -> safety_pb2.ClassifyResponse:
        return await self._unary(
            self.stub.Classify, safety_pb2.ClassifyRequest(texts=texts, direction=direction)
        )

    async def info(self) -> safety_pb2.GetClassifierInfoResponse:
        return await self._unary(self.stub.GetClassifierInfo, safety_pb2.GetClassifierInfoRequest())


class HistoryClient(_Client):
    dependency = "history"

    def __init__(
        self, target: str, timeout_s: float, retry_after_s: int, keepalive: KeepAlive = KeepAlive()
    ) -> None:
        # Every history RPC is idempotent: reads, and writes keyed by client-supplied ids.
        super().__init__(
            make_channel(target, ["parlance.history.v1.HistoryService"], keepalive),
            timeout_s,
            retry_after_s,
        )
        self.stub = history_pb2_grpc.HistoryServiceStub(self.channel)

    async def call(self, method_name: str, request: Any) -> Any:
        """Calls any HistoryService RPC by name (the REST routes map onto them one to one)."""
        return await self._unary(getattr(self.stub, method_name), request)

    async def export_training_data(
        self, request: history_pb2.ExportTrainingDataRequest, timeout_s: float
    ) -> AsyncIterator[history_pb2.ExportTrainingDataResponse]:
        """Streams the export; closing the iterator cancels the call."""
        call = self.stub.ExportTrainingData(
            request, timeout=timeout_s, metadata=outgoing_metadata()
        )
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc
        finally:
            call.cancel()

    async def get_conversation(
        self, user_id: str, conversation_id: str, message_id: str | None = None
    ) -> history_pb2.GetConversationResponse:
        """The active branch, or with message_id the path from the root to that message."""
        request = history_pb2.GetConversationRequest(
            user_id=user_id, conversation_id=conversation_id
        )
        if message_id:
            request.message_id = message_id
        return await self.call("GetConversation", request)

    async def append_messages(
        self, request: history_pb2.AppendMessagesRequest
    ) -> history_pb2.AppendMessagesResponse:
        return await self.call("AppendMessages", request)
