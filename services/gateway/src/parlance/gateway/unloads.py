"""Removals still to finish: a registered model was removed (DELETE /v1/admin/models/{id}) while
UnloadModel failed on a target (unreachable, overloaded, past its deadline). The target would
go on serving a model that nothing registers, and nothing else would ever unload it.

Each failed (target, model) pair is kept in Redis (registrations.py, `<prefix>:unloading`), so
that every gateway replica sees it; each replica's registry sync asks the target again while
it lists the model, and forgets the pair once the target no longer lists it (unloaded, or the
generator restarted) or the id was registered again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from parlance.gateway import errors
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.metrics import MODEL_REGISTRATIONS
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.registrations import RegistryStore
from parlance.gateway.routing import Target

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (target url, model id)


class PendingUnloads:
    def __init__(self, store: RegistryStore, generator: GeneratorClient) -> None:
        self.store = store
        self.generator = generator
        # Pairs noted while Redis did not answer: written there at the next sync.
        self._local: set[Pair] = set()
        self._running: set[Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def note(self, model_id: str, target_urls: Collection[str]) -> None:
        pairs = {(url, model_id) for url in target_urls}
        try:
            await self.store.note_unloads(pairs)
        except RedisUnavailable:
            self._local |= pairs

    async def retry(self, registered: Collection[str]) -> None:
        """Asks each serving target that still lists a removed model to unload it (in the
        background, one call per pair at a time). Raises RedisUnavailable."""
        if self._local:
            await self.store.note_unloads(self._local)
            self._local.clear()
        targets = {t.url: t for t in self.generator.targets}
        for pair in await self.store.pending_unloads():
            url, model_id = pair
            target = targets.get(url)
            gone = target is None or (target.serving and model_id not in target.models)
            if gone or model_id in registered:
                await self.store.forget_unload(pair)
            elif target is not None and target.serving and pair not in self._running:
                self._running.add(pair)
                task = asyncio.create_task(self._unload(target, pair))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _unload(self, target: Target, pair: Pair) -> None:
        try:
            try:
                await target.client.unload_model(pair[1])
            except errors.APIError as exc:
                if exc.status != 404:  # NOT_FOUND: gone already, as wanted
                    MODEL_REGISTRATIONS.labels("unload", "failed").inc()
                    log.warning(
                        "removed model still not unloaded: %s",
                        exc.message,
                        extra={"model": pair[1], "target": pair[0]},
                    )
                    return
            await self.store.forget_unload(pair)
            MODEL_REGISTRATIONS.labels("unload", "ok").inc()
            log.info("removed model unloaded", extra={"model": pair[1], "target": pair[0]})
            await self.generator.refresh()
        except RedisUnavailable:
            pass  # the pair stays noted: the next sync finds the model gone and forgets it
        finally:
            self._running.discard(pair)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
