"""Models registered at run time (README, "Registering models and splitting traffic").

POST /v1/admin/models loads a model folder (a reward or embedding model, a LoRA adapter) on
the generator targets with LoadModel: every serving target, or for an adapter those serving
its parent. It is all or nothing: when one target refuses, the others unload it again and the
generator's error is the answer. Registrations and run-time aliases live in Redis
(registrations.py); every `sync_s` this process re-reads them and loads a registered model on
any serving target that should list it and does not (a generator that restarted, a target
that was down at registration, a registration made by another gateway replica), and retries
the unloads of removed models that a target could not unload (unloads.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from parlance.gateway import errors
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.clients.generator import LOAD_TIMEOUT_S
from parlance.gateway.metrics import MODEL_REGISTRATIONS, MODELS_REGISTERED
from parlance.gateway.model_aliases import AliasAdmin
from parlance.gateway.models import ModelRegistry
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.registrations import (
    Registration,
    RegistryStore,
    check_parent,
    on_target,
    redis_down,
)
from parlance.gateway.routing import Target
from parlance.gateway.unloads import PendingUnloads
from parlance.generator.v1 import generator_pb2

log = logging.getLogger(__name__)

# A target that refused to load a registered model again is asked again after this long
# (not at every sync: a generator without GENERATOR_LOAD_ROOT refuses every time).
REAPPLY_BACKOFF_S = 60.0
# A "loading" reservation older than this was left by a gateway that stopped mid-load or could
# not save or drop it: a new registration of the id takes it over, DELETE removes it. The load
# deadline plus a margin, so a registration still loading is never taken over.
STALE_RESERVATION_S = LOAD_TIMEOUT_S + 60.0


class RuntimeModels(AliasAdmin):
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
        self._reapplying: set[tuple[str, str]] = set()
        # (target, model) → loop time before which a load that failed there is not retried.
        self._retry_at: dict[tuple[str, str], float] = {}
        self.reapply_backoff_s = REAPPLY_BACKOFF_S
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.unloads = PendingUnloads(store, generator)
        self.stale_reservation_s = STALE_RESERVATION_S

    # --- lifetime -------------------------------------------------------------------------

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

    # --- where a registration belongs -----------------------------------------------------

    @staticmethod
    def belongs(registration: Registration, target: Target) -> bool:
        return not registration.parent or registration.parent in target.models

    def reapply(self) -> None:
        """Loads each registered model on each serving target that should list it and does
        not (in the background, one load per model and target at a time; after a failure,
        not again there for reapply_backoff_s)."""
        now = asyncio.get_running_loop().time()
        for target in self.generator.targets:
            if not target.serving:
                continue
            for registration in self.registrations.values():
                key = (target.url, registration.id)
                missing = registration.id not in target.models
                due = self._retry_at.get(key, 0.0) <= now and key not in self._reapplying
                if missing and due and self.belongs(registration, target):
                    self._reapplying.add(key)
                    task = asyncio.create_task(self._reapply_one(target, registration, key))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _reapply_one(
        self, target: Target, registration: Registration, key: tuple[str, str]
    ) -> None:
        try:
            await target.client.load_model(registration.request())
            self._retry_at.pop(key, None)
            if registration.id not in self.registrations:  # removed while it loaded
                await target.client.unload_model(registration.id)
                return
            MODEL_REGISTRATIONS.labels("reapply", "ok").inc()
            log.info(
                "registered model loaded again",
                extra={"model": registration.id, "target": target.url},
            )
            await self.generator.refresh()
        except errors.APIError as exc:
            if exc.code == "conflict":  # ALREADY_EXISTS: another worker or replica loaded it
                await self.generator.refresh()
                return
            self._retry_at[key] = asyncio.get_running_loop().time() + self.reapply_backoff_s
            MODEL_REGISTRATIONS.labels("reapply", "failed").inc()
            log.warning(
                "registered model could not be loaded again: %s",
                exc.message,
                extra={"model": registration.id, "target": target.url},
            )
        finally:
            self._reapplying.discard(key)

    # --- register and remove --------------------------------------------------------------

    def served(self) -> dict[str, generator_pb2.ModelInfo]:
        return {info.id: info for t in self.generator.targets for info in t.models.values()}

    async def _check_new(self, registration: Registration) -> None:
        served = self.served()
        if registration.id in served or registration.id in self.registrations:
            raise errors.APIError(
                409,
                f"A model with the id '{registration.id}' exists already.",
                param="id",
                code="model_exists",
            )
        if registration.id in self.models.aliases:
            raise errors.APIError(
                409,
                f"'{registration.id}' is an alias; choose another id.",
                param="id",
                code="model_exists",
            )
        if registration.parent is not None:
            check_parent(registration.parent, served)
        if await self.store.retired(registration.id):
            raise errors.APIError(
                409,
                f"The adapter id '{registration.id}' was registered before and removed; adapter "
                "ids are never reused (register the adapter under a new name).",
                param="id",
                code="model_exists",
            )

    def _targets_for(self, registration: Registration) -> list[Target]:
        targets = [t for t in self.generator.targets if t.serving and self.belongs(registration, t)]
        if not targets:
            raise errors.service_unavailable(
                "No generator target that could load the model is serving; retry later.",
                self.retry_after_s,
            )
        return targets

    async def register(self, registration: Registration) -> Registration:
        async with self._lock:
            try:
                await self._check_new(registration)
                targets = self._targets_for(registration)
                stale_before = time.time() - self.stale_reservation_s
                if not await self.store.reserve(registration, stale_before):
                    raise errors.APIError(
                        409,
                        f"A model with the id '{registration.id}' is being registered.",
                        param="id",
                        code="model_exists",
                    )
            except RedisUnavailable:
                raise redis_down(self.retry_after_s) from None
            except errors.APIError:
                MODEL_REGISTRATIONS.labels("register", "rejected").inc()
                raise
            await self._load_everywhere(registration, targets)
            self.registrations[registration.id] = registration
            MODELS_REGISTERED.set(len(self.registrations))
        MODEL_REGISTRATIONS.labels("register", "ok").inc()
        log.info(
            "model registered",
            extra={"model": registration.id, "targets": [t.url for t in targets]},
        )
        await self.generator.refresh()
        return registration

    async def _load_everywhere(self, registration: Registration, targets: list[Target]) -> None:
        """LoadModel on every target; on any failure, unloads it where it loaded, drops the
        reservation and raises the first target's error."""
        request = registration.request()
        results = await asyncio.gather(
            *(t.client.load_model(request) for t in targets), return_exceptions=True
        )
        failed = [
            (t, r) for t, r in zip(targets, results, strict=True) if isinstance(r, BaseException)
        ]
        redis_error: errors.APIError | None = None
        if not failed:
            try:
                await self.store.save(registration)
                return
            except RedisUnavailable:
                # Raised as the registry's outage, not as a target's error. The reservation
                # likely stays (Redis is down to drop it too) until it is stale.
                redis_error = redis_down(self.retry_after_s)
        loaded = [
            t for t, r in zip(targets, results, strict=True) if not isinstance(r, BaseException)
        ]
        await asyncio.gather(
            *(t.client.unload_model(registration.id) for t in loaded), return_exceptions=True
        )
        try:
            await self.store.remove(registration.id, retire=False)
        except RedisUnavailable:
            log.warning("could not drop a failed registration", extra={"model": registration.id})
        MODEL_REGISTRATIONS.labels("register", "failed").inc()
        if redis_error is not None:
            raise redis_error
        target, error = failed[0]
        if isinstance(error, errors.APIError):
            raise on_target(error, target)
        raise error

    async def _stale(self, model_id: str) -> Registration | None:
        """A "loading" reservation of the id old enough to be a leftover (see
        STALE_RESERVATION_S); DELETE removes it as a registration."""
        try:
            found = await self.store.registration(model_id)
        except RedisUnavailable:
            raise redis_down(self.retry_after_s) from None
        stale_before = time.time() - self.stale_reservation_s
        if found is None or found.state != "loading" or found.reserved_at >= stale_before:
            return None
        return found

    async def remove(self, model_id: str) -> tuple[list[str], list[str]]:
        """Unregisters and unloads a model; the targets it was unloaded from, and those where
        the unload failed (retried by sync until they no longer list it)."""
        async with self._lock:
            registration = self.registrations.get(model_id) or await self._stale(model_id)
            if registration is None:
                raise errors.not_found(
                    f"No model '{model_id}' was registered through the admin API (models of "
                    "GENERATOR_MODELS are changed there).",
                    param="model_id",
                )
            for alias, weights in self.models.aliases.items():
                if any(m == model_id and w > 0 for m, w in weights):
                    raise errors.APIError(
                        409,
                        f"The alias '{alias}' sends traffic to '{model_id}'; change the alias "
                        "first (PUT /v1/admin/aliases/{alias}).",
                        param="model_id",
                        code="model_in_use",
                    )
            try:
                await self.store.remove(model_id, retire=registration.parent is not None)
            except RedisUnavailable:
                raise redis_down(self.retry_after_s) from None
            self.registrations.pop(model_id, None)
            MODELS_REGISTERED.set(len(self.registrations))
            listing = [t for t in self.generator.targets if model_id in t.models]
            results = await asyncio.gather(
                *(t.client.unload_model(model_id) for t in listing), return_exceptions=True
            )
            # NOT_FOUND: the target no longer had it (a restart), as wanted.
            pending = [
                t.url
                for t, r in zip(listing, results, strict=True)
                if isinstance(r, BaseException)
                and not (isinstance(r, errors.APIError) and r.status == 404)
            ]
            await self.unloads.note(model_id, pending)
        for url in pending:
            log.warning(
                "registered model could not be unloaded; retried at each sync",
                extra={"model": model_id, "target": url},
            )
        MODEL_REGISTRATIONS.labels("remove", "ok").inc()
        await self.generator.refresh()
        return [t.url for t, r in zip(listing, results, strict=True) if r is None], pending
