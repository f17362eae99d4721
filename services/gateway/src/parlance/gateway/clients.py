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
from parlance.gateway.metrics import (
    DEPENDENCY_ERRORS,
    DEPENDENCY_LATENCY,
    GENERATOR_CALLS,
    GENERATOR_TARGET_UP,
)
from parlance.gateway.routing import RoutingTable, Target
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


class GeneratorTargetClient(_Client):
    """One generator target (an address, or a DNS name gRPC balances over). The gateway holds
    one per target, behind GeneratorClient."""

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
            # Only ListModels, CountTokens and Embed are retried. Generate is not: a generator
            # that failed it (keepalive noticed it frozen, say) would only be asked again to no
            # avail, and the client is waiting; the 503 tells it when to come back.
            make_channel(
                target,
                [
                    "parlance.generator.v1.GeneratorService/ListModels",
                    "parlance.generator.v1.GeneratorService/CountTokens",
                    "parlance.generator.v1.GeneratorService/Embed",
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

    async def embed(self, request: generator_pb2.EmbedRequest) -> generator_pb2.EmbedResponse:
        return await self._unary(self.stub.Embed, request, 60.0)

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


def parse_targets(value: str) -> list[str]:
    """GATEWAY_GENERATOR_URL: one target, or several separated by commas (or a JSON list)."""
    text = value.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("GATEWAY_GENERATOR_URL as JSON must be a list of strings")
    else:
        items = text.split(",")
    targets = [t.strip() for t in items if t.strip()]
    if not targets:
        raise ValueError("GATEWAY_GENERATOR_URL names no generator target")
    return targets


def _target_gone(exc: errors.APIError) -> bool:
    """The call failed because its target is unreachable or not serving (nothing ran there),
    so another target may take it."""
    cause = exc.__cause__
    return isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.UNAVAILABLE


class GeneratorClient:
    """Every generator target behind one client, routed by model id (routing.py): `generate`,
    `count_tokens` and `embed` go to a target serving `request.model`, and a call none of
    whose work started there (the target died, or is loading or stopping) is tried on the
    next one. A stream that has started and then fails ends with an error, as before.

    The routing table follows each target's health (a Watch stream per target: a dead or
    stopping target leaves it at once) and its ListModels (re-read when it turns SERVING and
    every `refresh_s`). Background work starts with the first call, in the caller's loop.
    """

    dependency = "generator"

    def __init__(
        self,
        targets: str | list[str],
        timeout_s: float,
        retry_after_s: int,
        idle_timeout_s: float = 120.0,
        keepalive: KeepAlive = KeepAlive(),
        refresh_s: float = 30.0,
    ) -> None:
        urls = parse_targets(targets) if isinstance(targets, str) else list(targets)
        self.retry_after_s = retry_after_s
        self.refresh_s = refresh_s
        self.table = RoutingTable(
            Target(
                url,
                GeneratorTargetClient(url, timeout_s, retry_after_s, idle_timeout_s, keepalive),
            )
            for url in urls
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Set once every target's health has been seen (start-up).
        self._settled = asyncio.Event()
        self._refreshed_at = 0.0

    @property
    def targets(self) -> list[Target]:
        return self.table.targets

    # --- the routing table ----------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._tasks:
            return
        for target in self.targets:
            self._tasks.append(asyncio.create_task(self._watch(target)))
        self._tasks.append(asyncio.create_task(self._refresh_periodically()))

    async def _list(self, target: Target) -> bool:
        try:
            reply = await target.client.list_models()
        except errors.APIError:
            return False
        models = {m.id: m for m in reply.models}
        if models != target.models:
            log.info(
                "generator target lists models",
                extra={"target": target.url, "models": list(models)},
            )
        target.models = models
        return True

    async def _set_serving(self, target: Target, serving: bool) -> None:
        # A target joins the table only once its models are known.
        if serving and not await self._list(target):
            serving = False
        if serving != target.serving:
            log.log(
                logging.INFO if serving else logging.WARNING,
                "generator target %s",
                "serving" if serving else "not serving",
                extra={"target": target.url, "models": list(target.models)},
            )
        target.serving = serving
        target.seen = True
        GENERATOR_TARGET_UP.labels(target.url).set(1 if serving else 0)
        if all(t.seen for t in self.targets):
            self._settled.set()

    async def _watch(self, target: Target) -> None:
        backoff_s = 0.2
        while True:
            try:
                async for serving in target.client.watch_health():
                    await self._set_serving(target, serving)
                    backoff_s = 0.2
            except grpc.aio.AioRpcError:
                pass
            except Exception:  # the watch must outlive any surprise; the table stays right
                log.exception("watching a generator target failed", extra={"target": target.url})
            await self._set_serving(target, False)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 2.0)

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    async def refresh(self) -> None:
        """Re-reads the models of every serving target now (a model was asked for that no
        target listed: a generator may have gained it)."""
        self._ensure_started()
        self._refreshed_at = asyncio.get_running_loop().time()
        await asyncio.gather(*(self._list(t) for t in self.targets if t.serving))

    async def wait_listed(self, timeout_s: float) -> None:
        """Until every target's health has been seen once (start-up), at most timeout_s."""
        self._ensure_started()
        if not self._settled.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await self._settled.wait()
            except TimeoutError:
                pass

    def seconds_since_refresh(self) -> float:
        return asyncio.get_running_loop().time() - self._refreshed_at

    def _pick(self, model: str, tried: list[Target]) -> Target:
        target = self.table.pick(model, tried)
        if target is None:
            what = f"model {model!r}" if model else "the default model"
            raise errors.service_unavailable(
                f"No generator serving {what} is available; retry later.", self.retry_after_s
            )
        return target

    # --- the calls ------------------------------------------------------------------------

    async def _unary(self, method: str, request: Any) -> Any:
        self._ensure_started()
        tried: list[Target] = []
        while True:
            target = self._pick(request.model, tried)
            tried.append(target)
            target.in_flight += 1
            try:
                reply = await getattr(target.client, method)(request)
            except errors.APIError as exc:
                if _target_gone(exc) and self.table.pick(request.model, tried) is not None:
                    log.warning(
                        "generator target unavailable: %s goes to another",
                        method,
                        extra={"target": target.url},
                    )
                    continue
                raise
            finally:
                target.in_flight -= 1
            GENERATOR_CALLS.labels(target.url, method).inc()
            return reply

    async def list_models(self) -> generator_pb2.ListModelsResponse:
        """The union of the targets' models (each id once); 503 while no target has ever
        listed any (all of them down since the gateway started)."""
        await self.wait_listed(5.0)
        models = self.table.models()
        if not models:
            raise errors.service_unavailable(
                "The generator service is unavailable; retry later.", self.retry_after_s
            )
        return generator_pb2.ListModelsResponse(models=models)

    async def count_tokens(
        self, request: generator_pb2.CountTokensRequest
    ) -> generator_pb2.CountTokensResponse:
        return await self._unary("count_tokens", request)

    async def embed(self, request: generator_pb2.EmbedRequest) -> generator_pb2.EmbedResponse:
        return await self._unary("embed", request)

    async def generate(
        self, request: generator_pb2.GenerateRequest
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Streams the generation from a target serving request.model. Closing the iterator
        (or cancelling the consuming task) cancels the gRPC call, which aborts the engine
        request. A target that fails before the first message is replaced by another."""
        self._ensure_started()
        tried: list[Target] = []
        while True:
            target = self._pick(request.model, tried)
            tried.append(target)
            target.in_flight += 1
            stream = target.client.generate(request)
            try:
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    return
                except errors.APIError as exc:
                    if _target_gone(exc) and self.table.pick(request.model, tried) is not None:
                        log.warning(
                            "generator target unavailable: the call goes to another",
                            extra={"target": target.url},
                        )
                        continue
                    raise
                GENERATOR_CALLS.labels(target.url, "generate").inc()
                yield first
                async for response in stream:
                    yield response
                return
            finally:
                await stream.aclose()
                target.in_flight -= 1

    async def check_health(self, timeout_s: float = 1.0) -> bool:
        """Some target is SERVING."""
        await self.wait_listed(timeout_s)
        return any(t.serving for t in self.targets)

    def status(self) -> dict[str, dict[str, Any]]:
        return self.table.status()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for target in self.targets:
            await target.client.close()


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
        self, texts: list[str], direction: safety_pb2.Direction
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

    # One method per HistoryService RPC, typed by its request and response messages.

    async def create_conversation(
        self, request: history_pb2.CreateConversationRequest
    ) -> history_pb2.CreateConversationResponse:
        return await self._unary(self.stub.CreateConversation, request)

    async def get_conversation(
        self, request: history_pb2.GetConversationRequest
    ) -> history_pb2.GetConversationResponse:
        """The active branch, or with message_id the path from the root to that message."""
        return await self._unary(self.stub.GetConversation, request)

    async def list_conversations(
        self, request: history_pb2.ListConversationsRequest
    ) -> history_pb2.ListConversationsResponse:
        return await self._unary(self.stub.ListConversations, request)

    async def update_conversation(
        self, request: history_pb2.UpdateConversationRequest
    ) -> history_pb2.UpdateConversationResponse:
        return await self._unary(self.stub.UpdateConversation, request)

    async def delete_conversation(
        self, request: history_pb2.DeleteConversationRequest
    ) -> history_pb2.DeleteConversationResponse:
        return await self._unary(self.stub.DeleteConversation, request)

    async def append_messages(
        self, request: history_pb2.AppendMessagesRequest
    ) -> history_pb2.AppendMessagesResponse:
        return await self._unary(self.stub.AppendMessages, request)

    async def put_feedback(
        self, request: history_pb2.PutFeedbackRequest
    ) -> history_pb2.PutFeedbackResponse:
        return await self._unary(self.stub.PutFeedback, request)

    async def search_messages(
        self, request: history_pb2.SearchMessagesRequest
    ) -> history_pb2.SearchMessagesResponse:
        return await self._unary(self.stub.SearchMessages, request)

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
