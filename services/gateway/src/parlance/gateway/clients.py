"""gRPC clients of the generator, safety and history services.

Each call has a deadline; only idempotent calls are retried (by gRPC's own retry policy, with
backoff, on UNAVAILABLE). gRPC failures become OpenAI-shaped errors here, in one place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
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


def _retry_config(services: list[str]) -> str:
    return json.dumps(
        {
            # Spread calls over every address the target resolves to (dns:///generator:50051
            # with several generator replicas); gRPC's default would pin one address.
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": s} for s in services],
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


def make_channel(target: str, idempotent_services: list[str]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _retry_config(idempotent_services)),
            ("grpc.keepalive_time_ms", 30_000),
            # Reconnect quickly after a dependency restarts (default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
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

    def __init__(self, target: str, timeout_s: float, retry_after_s: int) -> None:
        super().__init__(
            make_channel(target, ["parlance.generator.v1.GeneratorService"]),
            timeout_s,
            retry_after_s,
        )
        # Only ListModels and CountTokens are idempotent; Generate is a stream and the retry
        # policy never retries once a response message has arrived.
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
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc
        finally:
            call.cancel()


class SafetyClient(_Client):
    dependency = "safety"

    def __init__(self, target: str, timeout_s: float, retry_after_s: int) -> None:
        super().__init__(
            make_channel(target, ["parlance.safety.v1.SafetyService"]), timeout_s, retry_after_s
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

    def __init__(self, target: str, timeout_s: float, retry_after_s: int) -> None:
        # Every history RPC is idempotent: reads, and writes keyed by client-supplied ids.
        super().__init__(
            make_channel(target, ["parlance.history.v1.HistoryService"]), timeout_s, retry_after_s
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
