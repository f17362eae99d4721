"""Re-applying registered models, part of RuntimeModels: at every sync, each registered model
is loaded on each serving target that should list it and does not (a generator that
restarted, a target that was down at registration, a registration made by another gateway
replica), in the background, one load per model and target at a time."""

from __future__ import annotations

import asyncio
import logging

from parlance.gateway import errors
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.metrics import MODEL_REGISTRATIONS
from parlance.gateway.registrations import Registration
from parlance.gateway.routing import Target

log = logging.getLogger(__name__)

# A target that refused to load a registered model again is asked again after this long
# (not at every sync: a generator without GENERATOR_LOAD_ROOT refuses every time).
REAPPLY_BACKOFF_S = 60.0

Key = tuple[str, str]  # (target url, model id)


class Reapplier:
    generator: GeneratorClient
    registrations: dict[str, Registration]
    reapply_backoff_s: float
    # Loads under way, and (target, model) → loop time before which a load that failed there
    # is not retried.
    _reapplying: set[Key]
    _retry_at: dict[Key, float]
    _tasks: set[asyncio.Task[None]]

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
                if missing and due and registration.belongs(target):
                    self._reapplying.add(key)
                    task = asyncio.create_task(self._reapply_one(target, registration, key))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _reapply_one(self, target: Target, registration: Registration, key: Key) -> None:
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
