"""GeneratorClient: every generator target behind one client, routed by model id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from parlance.gateway import errors
from parlance.gateway.clients.channel import DEFAULT_KEEPALIVE, KeepAlive
from parlance.gateway.clients.generator import GeneratorTargetClient
from parlance.gateway.clients.targets import Discovery, parse_targets
from parlance.gateway.metrics import GENERATOR_CALLS, GENERATOR_TARGET_UP
from parlance.gateway.routing import RoutingTable, Target, conversation_key
from parlance.generator.v1 import generator_pb2

log = logging.getLogger(__name__)


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

    @property
    def targets(self) -> list[Target]:
        return self.table.targets

    # --- the routing table ----------------------------------------------------------------

    def _new_target(self, url: str) -> Target:
        return Target(url, GeneratorTargetClient(url, *self._client_args))

    def _ensure_started(self) -> None:
        if self._tasks:
            return
        for target in self.targets:
            self._watches[target.url] = asyncio.create_task(self._watch(target))
        self._tasks.append(asyncio.create_task(self._refresh_periodically()))
        if self._discovery is not None:
            self._tasks.append(asyncio.create_task(self._discover_periodically()))

    async def _discover_periodically(self) -> None:
        assert self._discovery is not None
        while True:
            wanted, failed = await self._discovery.addresses()
            for entry in failed:
                log.warning(
                    "generator lookup failed; its last addresses stay", extra={"target": entry}
                )
            known = {t.url: t for t in self.targets}
            for url in wanted:
                if url not in known:
                    log.info("generator replica found", extra={"target": url})
                    target = self._new_target(url)
                    self.table.targets.append(target)
                    self._watches[url] = asyncio.create_task(self._watch(target))
            for url, target in known.items():
                if url not in wanted:
                    log.info("generator replica gone from DNS", extra={"target": url})
                    self.table.targets.remove(target)
                    self._watches.pop(url).cancel()
                    self._tasks.append(asyncio.create_task(self._retire(target)))
            if not self.targets:
                self._settled.set()  # nothing to wait for: calls get 503 until DNS has some
            await asyncio.sleep(self.refresh_s)

    async def _retire(self, target: Target) -> None:
        """Closes a removed target's channel once the calls still on it have finished (polled:
        calls do not signal their end, and a removal is rare)."""
        while target.in_flight:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        GENERATOR_TARGET_UP.labels(target.url).set(0)
        await target.client.close()

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

    async def close(self) -> None:
        tasks = [*self._tasks, *self._watches.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._watches.clear()
        for target in self.targets:
            await target.client.close()
