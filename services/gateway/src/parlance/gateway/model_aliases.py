"""Run-time aliases (PUT/DELETE /v1/admin/aliases/{alias}), part of RuntimeModels: they are
kept in Redis beside the registrations and replace a configured alias of the same name."""

from __future__ import annotations

from parlance.gateway import errors
from parlance.gateway.models import ModelRegistry
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.registrations import Registration, RegistryStore, redis_down
from parlance.gateway.splits import Weights
from parlance.generator.v1 import generator_pb2


class AliasAdmin:
    models: ModelRegistry
    store: RegistryStore
    registrations: dict[str, Registration]
    retry_after_s: int

    def served(self) -> dict[str, generator_pb2.ModelInfo]:
        raise NotImplementedError

    async def set_alias(self, alias: str, weights: Weights) -> None:
        """Sets (or replaces) a run-time alias; its models must be served or registered."""
        if alias in self.served():
            raise errors.APIError(
                409,
                f"'{alias}' is a model id; an alias needs a name of its own.",
                param="alias",
                code="model_exists",
            )
        known = set(self.served()) | set(self.registrations)
        unknown = [m for m, _ in weights if m not in known]
        if unknown:
            raise errors.APIError(
                404,
                f"No model '{unknown[0]}' is served or registered.",
                param="weights",
                code="model_not_found",
            )
        try:
            await self.store.set_alias(alias, weights)
        except RedisUnavailable:
            raise redis_down(self.retry_after_s) from None
        self.models.overrides = {**self.models.overrides, alias: weights}

    async def delete_alias(self, alias: str) -> None:
        try:
            removed = await self.store.delete_alias(alias)
        except RedisUnavailable:
            raise redis_down(self.retry_after_s) from None
        if not removed:
            raise errors.not_found(
                f"No run-time alias '{alias}' (aliases of GATEWAY_MODEL_ALIASES are changed "
                "there, or replaced with PUT).",
                param="alias",
            )
        self.models.overrides = {a: w for a, w in self.models.overrides.items() if a != alias}
