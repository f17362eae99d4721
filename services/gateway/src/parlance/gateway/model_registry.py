"""Models registered at run time (README, "Registering models and splitting traffic").

POST /v1/admin/models loads a model folder (a reward or embedding model, a LoRA adapter) on
the generator targets with LoadModel (model_register.py); DELETE unloads it again
(model_remove.py). Registrations and run-time aliases (model_aliases.py) live in Redis
(registrations.py); every `sync_s` this process re-reads them and loads a registered model on
any serving target that should list it and does not (model_reapply.py: a generator that
restarted, a target that was down at registration, a registration made by another gateway
replica), and retries the unloads of removed models that a target could not unload
(unloads.py).

RuntimeModels puts these parts together over one state: the registrations last read, the
generator client, the store, and one lock that orders registering, removing and syncing.
"""

from __future__ import annotations

import asyncio
import logging

from parlance.gateway.clients import GeneratorClient
from parlance.gateway.metrics import MODELS_REGISTERED
from parlance.gateway.model_aliases import AliasAdmin
from parlance.gateway.model_reapply import REAPPLY_BACKOFF_S, Key, Reapplier
from parlance.gateway.model_register import STALE_RESERVATION_S, Registering
from parlance.gateway.model_remove import Removing
from parlance.gateway.models import ModelRegistry
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.registrations import Registration, RegistryStore
from parlance.gateway.unloads import PendingUnloads

log = logging.getLogger(__name__)


class RuntimeModels(Registering, Removing, Reapplier, AliasAdmin):
    def __init__(
        self,
        generator: GeneratorClient,
        models: ModelRegistry,
        store: RegistryStore,
        sync_s: float,
        retry_after_s: int,
    ) -> None:
        self.generator = generator
        self.models = models
        self.store = store
        self.sync_s = sync_s
        self.retry_after_s = retry_after_s
        # The last registrations read from Redis (in force while Redis is down).
        self.registrations: dict[str, Registration] = {}
        self._lock = asyncio.Lock()
        self._reapplying: set[Key] = set()
        self._retry_at: dict[Key, float] = {}
        self.reapply_backoff_s = REAPPLY_BACKOFF_S
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.unloads = PendingUnloads(store, generator)
        self.stale_reservation_s = STALE_RESERVATION_S

    async def start(self) -> None:
        await self.sync()
        self._loop_task = asyncio.create_task(self._sync_periodically())

    async def close(self) -> None:
        # The sync loop is stopped between two syncs, not cancelled inside a Redis command
        # (redis-py's connection pool can hang the shutdown on a command cancelled midway).
        self._stopping.set()
        if self._loop_task is not None:
            await self._loop_task
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.unloads.close()

    async def _sync_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.sync_s)
                return
            except TimeoutError:
                pass
            try:
                await self.sync()
            except Exception:  # the loop must outlive any surprise
                log.exception("model registry sync failed")

    async def sync(self) -> None:
        """Re-reads registrations and aliases from Redis, then re-applies what is missing.
        Under the lock of register and remove: a read from before a removal must not bring
        the removed model back."""
        async with self._lock:
            try:
                registrations = await self.store.registrations()
                aliases = await self.store.aliases()
            except RedisUnavailable:
                return
            self.registrations = {k: r for k, r in registrations.items() if r.state == "ready"}
            self.models.overrides = aliases
            MODELS_REGISTERED.set(len(self.registrations))
            # Starts the pool's health watches if no call has yet (a gateway restarted with no
            # traffic must still notice its targets and re-apply to them).
            await self.generator.check_health(0.0)
            self.reapply()
            try:
                await self.unloads.retry(self.registrations)
            except RedisUnavailable:
                return
