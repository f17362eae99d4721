"""GeneratorClient: every generator target behind one client, routed by model id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from parlance.gateway import errors
from parlance.gateway.clients.channel import DEFAULT_KEEPALIVE, KeepAlive
from parlance.gateway.clients.pool_upkeep import TargetUpkeep
from parlance.gateway.clients.targets import Discovery, parse_targets
from parlance.gateway.metrics import GENERATOR_CALLS
from parlance.gateway.routing import RoutingTable, Target, conversation_key
from parlance.generator.v1 import generator_pb2

log = logging.getLogger(__name__)


def _target_gone(exc: errors.APIError) -> bool:
    """The call failed because its target is unreachable or not serving (nothing ran there),
    so another target may take it."""
    cause = exc.__cause__
    return isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.UNAVAILABLE


class GeneratorClient(TargetUpkeep):
    """Every generator target behind one client, routed by model id (routing.py): `generate`,
    `count_tokens` and `embed` go to a target serving `request.model`, and a call none of
    whose work started there (the target died, or is loading or stopping) is tried on the
    next one. A stream that has started and then fails ends with an error, as before.

    The routing table follows each target's health (a Watch stream per target: a dead or
    stopping target leaves it at once) and its ListModels (re-read when it turns SERVING and
    every `refresh_s`: pool_upkeep.py). Background work starts with the first call, in the
    caller's loop.
    """

    dependency = "generator"

    def __init__(
        self,
        targets: str | list[str],
        timeout_s: float,
        retry_after_s: int,
        idle_timeout_s: float = 120.0,
        keepalive: KeepAlive = DEFAULT_KEEPALIVE,
        refresh_s: float = 30.0,
        *,
        affinity: bool = False,
        affinity_load_factor: float = 0.25,
        discovery: Discovery | None = None,
    ) -> None:
        urls = parse_targets(targets) if isinstance(targets, str) else list(targets)
        self.retry_after_s = retry_after_s
        self.refresh_s = refresh_s
        self.affinity = affinity
        self._client_args = (timeout_s, retry_after_s, idle_timeout_s, keepalive)
        # With DNS discovery the targets are the addresses found, added and removed as DNS
        # changes (targets.py); without it, one target per entry.
        self._discovery = discovery
        self.table = RoutingTable(
            (self._new_target(url) for url in ([] if discovery else urls)),
            affinity_load_factor=affinity_load_factor,
        )
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Set once every target's health has been seen (start-up).
        self._settled = asyncio.Event()
        self._refreshed_at = 0.0

    def _pick(self, model: str, tried: list[Target], affinity: str | None = None) -> Target:
        target = self.table.pick(model, tried, affinity)
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

    async def export_encoder(
        self, request: generator_pb2.ExportEncoderRequest
    ) -> tuple[generator_pb2.EncoderSpec, bytes]:
        """An embed model's exported graph and spec (the intent router's local encoder)."""
        return await self._unary("export_encoder", request)

    async def score(self, request: generator_pb2.ScoreRequest) -> generator_pb2.ScoreResponse:
        """Scores candidate answers with the reward model request.model (best_of)."""
        return await self._unary("score", request)

    async def generate(
        self, request: generator_pb2.GenerateRequest
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Streams the generation from a target serving request.model. Closing the iterator
        (or cancelling the consuming task) cancels the gRPC call, which aborts the engine
        request. A target that fails before the first message is replaced by another."""
        self._ensure_started()
        tried: list[Target] = []
        key = conversation_key(request) if self.affinity else None
        while True:
            target = self._pick(request.model, tried, key)
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
