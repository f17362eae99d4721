"""Registering a model (POST /v1/admin/models), part of RuntimeModels: the id is checked and
reserved in Redis, then LoadModel runs on every target that should serve it (every serving
target, or for an adapter those serving its parent). All or nothing: when one target refuses,
the others unload it again and that target's error is the answer."""

from __future__ import annotations

import asyncio
import logging
import time

from parlance.gateway import errors
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.clients.generator import LOAD_TIMEOUT_S
from parlance.gateway.metrics import MODEL_REGISTRATIONS, MODELS_REGISTERED
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
from parlance.generator.v1 import generator_pb2

log = logging.getLogger(__name__)

# A "loading" reservation older than this was left by a gateway that stopped mid-load or could
# not save or drop it: a new registration of the id takes it over, DELETE removes it. The load
# deadline plus a margin, so a registration still loading is never taken over.
STALE_RESERVATION_S = LOAD_TIMEOUT_S + 60.0


class Registering:
    generator: GeneratorClient
    models: ModelRegistry
    store: RegistryStore
    registrations: dict[str, Registration]
    retry_after_s: int
    stale_reservation_s: float
    _lock: asyncio.Lock

    def served(self) -> dict[str, generator_pb2.ModelInfo]:
        return {info.id: info for t in self.generator.targets for info in t.models.values()}

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
        targets = [t for t in self.generator.targets if t.serving and registration.belongs(t)]
        if not targets:
            raise errors.service_unavailable(
                "No generator target that could load the model is serving; retry later.",
                self.retry_after_s,
            )
        return targets

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
