"""The generator pool's routing table kept right, the part of GeneratorClient (pool.py) that
runs in the background: a health Watch per target (a dead or stopping target leaves the table
at once), its ListModels re-read when it turns SERVING and every `refresh_s`, and with DNS
discovery (targets.py) replicas added and retired as DNS changes."""

from __future__ import annotations

import asyncio
import logging

import grpc

from parlance.gateway import errors
from parlance.gateway.clients.channel import KeepAlive
from parlance.gateway.clients.generator import GeneratorTargetClient
from parlance.gateway.clients.targets import Discovery
from parlance.gateway.metrics import GENERATOR_TARGET_UP
from parlance.gateway.routing import RoutingTable, Target

log = logging.getLogger(__name__)


class TargetUpkeep:
    table: RoutingTable
    refresh_s: float
    _client_args: tuple[float, int, float, KeepAlive]
    _discovery: Discovery | None
    _watches: dict[str, asyncio.Task[None]]
    _tasks: list[asyncio.Task[None]]
    # Set once every target's health has been seen (start-up).
    _settled: asyncio.Event
    _refreshed_at: float

    @property
    def targets(self) -> list[Target]:
        return self.table.targets

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

    async def close(self) -> None:
        tasks = [*self._tasks, *self._watches.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._watches.clear()
        for target in self.targets:
            await target.client.close()
