"""Removing a registered model (DELETE /v1/admin/models/{id}), part of RuntimeModels: it is
dropped from Redis (an adapter's id is retired for good), then UnloadModel runs on every
target that lists it; the targets where the unload failed are kept for the sync to retry
(unloads.py)."""

from __future__ import annotations

import asyncio
import logging
import time

from parlance.gateway import errors
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.metrics import MODEL_REGISTRATIONS, MODELS_REGISTERED
from parlance.gateway.models import ModelRegistry
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.registrations import Registration, RegistryStore, redis_down
from parlance.gateway.unloads import PendingUnloads

log = logging.getLogger(__name__)


class Removing:
    generator: GeneratorClient
    models: ModelRegistry
    store: RegistryStore
    registrations: dict[str, Registration]
    retry_after_s: int
    stale_reservation_s: float
    unloads: PendingUnloads
    _lock: asyncio.Lock

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
            self._check_unused(model_id)
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

    def _check_unused(self, model_id: str) -> None:
        """A model an alias sends traffic to stays until the alias changes."""
        for alias, weights in self.models.aliases.items():
            if any(m == model_id and w > 0 for m, w in weights):
                raise errors.APIError(
                    409,
                    f"The alias '{alias}' sends traffic to '{model_id}'; change the alias "
                    "first (PUT /v1/admin/aliases/{alias}).",
                    param="model_id",
                    code="model_in_use",
                )

    async def _stale(self, model_id: str) -> Registration | None:
        """A "loading" reservation of the id old enough to be a leftover (see
        model_register.STALE_RESERVATION_S); DELETE removes it as a registration."""
        try:
            found = await self.store.registration(model_id)
        except RedisUnavailable:
            raise redis_down(self.retry_after_s) from None
        stale_before = time.time() - self.stale_reservation_s
        if found is None or found.state != "loading" or found.reserved_at >= stale_before:
            return None
        return found
