"""The client of one generator target (GeneratorClient, in pool.py, holds one per target)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from parlance.common.request_id import outgoing_metadata
from parlance.gateway import errors
from parlance.gateway.clients.channel import (
    DEFAULT_KEEPALIVE,
    BaseClient,
    KeepAlive,
    to_api_error,
)
from parlance.gateway.metrics import DEPENDENCY_ERRORS
from parlance.generator.v1 import generator_pb2, generator_pb2_grpc

log = logging.getLogger(__name__)

# LoadModel reads a model folder and starts its engine (seconds on CPU for a reward model).
LOAD_TIMEOUT_S = 300.0
# ExportEncoder streams ~90 MB (all-MiniLM-L6-v2): well under a second between containers.
EXPORT_TIMEOUT_S = 60.0


# ExportEncoder's answers that say "embed through Embed": a model served by PyTorch or vLLM
# (FAILED_PRECONDITION), of another task (INVALID_ARGUMENT), an older generator (UNIMPLEMENTED).
NOT_EXPORTABLE = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
)


class EncoderNotExportable(Exception):
    """The generator does not export this model's encoder (its reason as the message)."""


class GeneratorTargetClient(BaseClient):
    """One generator target (an address, or a DNS name gRPC balances over). The gateway holds
    one per target, behind GeneratorClient."""

    dependency = "generator"
    # Only ListModels, CountTokens, Embed and Score are retried. Generate is not: a generator
    # that failed it (keepalive noticed it frozen, say) would only be asked again to no avail,
    # and the client is waiting; the 503 tells it when to come back.
    idempotent = (
        "parlance.generator.v1.GeneratorService/ListModels",
        "parlance.generator.v1.GeneratorService/CountTokens",
        "parlance.generator.v1.GeneratorService/Embed",
        "parlance.generator.v1.GeneratorService/Score",
    )
    stub_class = generator_pb2_grpc.GeneratorServiceStub
    stub: generator_pb2_grpc.GeneratorServiceStub

    def __init__(
        self,
        target: str,
        timeout_s: float,
        retry_after_s: int,
        idle_timeout_s: float = 120.0,
        keepalive: KeepAlive = DEFAULT_KEEPALIVE,
    ) -> None:
        super().__init__(target, timeout_s, retry_after_s, keepalive)
        # Longest silence between two messages of a generation once it has started: a live
        # but stuck engine ends the stream instead of holding the client until the deadline.
        # (Before the first message a request may wait in the engine's queue; the deadline
        # and keepalive cover that part.)
        self.idle_timeout_s = idle_timeout_s

    async def list_models(self) -> generator_pb2.ListModelsResponse:
        return await self._unary(self.stub.ListModels, generator_pb2.ListModelsRequest(), 5.0)

    async def count_tokens(
        self, request: generator_pb2.CountTokensRequest
    ) -> generator_pb2.CountTokensResponse:
        return await self._unary(self.stub.CountTokens, request, 10.0)

    async def embed(self, request: generator_pb2.EmbedRequest) -> generator_pb2.EmbedResponse:
        return await self._unary(self.stub.Embed, request, 60.0)

    async def score(self, request: generator_pb2.ScoreRequest) -> generator_pb2.ScoreResponse:
        return await self._unary(self.stub.Score, request, 60.0)

    async def export_encoder(
        self, request: generator_pb2.ExportEncoderRequest
    ) -> tuple[generator_pb2.EncoderSpec, bytes]:
        """An embed model's exported graph (ExportEncoder's pieces joined) and its spec."""
        call = self.stub.ExportEncoder(
            request, timeout=EXPORT_TIMEOUT_S, metadata=outgoing_metadata()
        )
        spec: generator_pb2.EncoderSpec | None = None
        pieces: list[bytes] = []
        try:
            async for chunk in call:
                if chunk.HasField("spec"):
                    spec = chunk.spec
                else:
                    pieces.append(chunk.graph)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in NOT_EXPORTABLE:
                raise EncoderNotExportable(exc.details() or exc.code().name) from exc
            DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc
        if spec is None:
            raise errors.APIError(
                502, "the generator sent no encoder spec", type="api_error", code="bad_gateway"
            )
        return spec, b"".join(pieces)

    async def load_model(
        self, request: generator_pb2.LoadModelRequest
    ) -> generator_pb2.LoadModelResponse:
        """LoadModel (never retried: a second try of a load that went through would be
        ALREADY_EXISTS). A generator that does not load models at run time (no
        GENERATOR_LOAD_ROOT: FAILED_PRECONDITION) is a 409 with its message, not a 500."""
        try:
            return await self.stub.LoadModel(
                request, timeout=LOAD_TIMEOUT_S, metadata=outgoing_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise errors.APIError(
                    409, exc.details() or "refused", code="generator_refused"
                ) from exc
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc

    async def unload_model(self, model_id: str) -> None:
        await self._unary(self.stub.UnloadModel, generator_pb2.UnloadModelRequest(id=model_id))

    async def watch_health(self) -> AsyncIterator[bool]:
        """SERVING or not, each time the target's health changes (the first answer at once).
        Ends with AioRpcError when the connection goes (the target died or is unreachable)."""
        call = self._health.Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            async for reply in call:
                yield reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            call.cancel()

    async def generate(
        self, request: generator_pb2.GenerateRequest
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Streams the generation. Closing the iterator (or cancelling the consuming task)
        cancels the gRPC call, which aborts the engine request."""
        call = self.stub.Generate(request, timeout=self.timeout_s, metadata=outgoing_metadata())
        watchdog: _IdleWatchdog | None = None
        try:
            responses = aiter(call)
            yield await anext(responses)
            watchdog = _IdleWatchdog(call, self.idle_timeout_s)
            while True:
                watchdog.waiting()
                try:
                    response = await anext(responses)
                except asyncio.CancelledError:
                    if not watchdog.fired or _cancelling():
                        raise
                    raise self._idle_error() from None
                # The consumer's time over the message (a slow HTTP reader keeps this
                # generator at its yield) is not the generator's silence.
                watchdog.answered()
                yield response
        except StopAsyncIteration:
            return
        except grpc.aio.AioRpcError as exc:
            DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc
        finally:
            if watchdog is not None:
                watchdog.stop()
            call.cancel()

    def _idle_error(self) -> errors.APIError:
        DEPENDENCY_ERRORS.labels(self.dependency, "IDLE_TIMEOUT").inc()
        log.warning("generator sent nothing for %.1f s: stream ended", self.idle_timeout_s)
        return errors.service_unavailable(
            f"The generator stopped responding for {self.idle_timeout_s:g} s.", self.retry_after_s
        )


def _cancelling() -> bool:
    """The current task itself is being cancelled (not just the call under it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _IdleWatchdog:
    """Cancels a stream's call after `idle_s` of one wait for a message: one timer per
    stream, moved on only when it fires, instead of an asyncio.timeout per message (a timer
    handle made and cancelled per token). Only the waits count (waiting() to answered()), not
    the consumer's time between them. The pending read then raises CancelledError, which
    generate() turns into the idle error."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, Any], idle_s: float) -> None:
        self.call = call
        self.idle_s = idle_s
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.active = False
        self.fired = False
        self._timer = self.loop.call_at(self.last + idle_s, self._check)

    def waiting(self) -> None:
        """A read of the next message starts."""
        self.last = self.loop.time()
        self.active = True

    def answered(self) -> None:
        """The read got its message: the clock stops until the next waiting()."""
        self.active = False

    def _check(self) -> None:
        now = self.loop.time()
        due = self.last + self.idle_s
        if not self.active or now < due:
            # Not waiting (the consumer holds the stream): look again one timeout later,
            # when a wait started by then may be due.
            self._timer = self.loop.call_at(due if self.active else now + self.idle_s, self._check)
            return
        self.fired = True
        self.call.cancel()

    def stop(self) -> None:
        self._timer.cancel()
