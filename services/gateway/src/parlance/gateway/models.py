"""The models the generator serves, cached briefly so each request does not ask for them."""

from __future__ import annotations

import time

from parlance.gateway import errors
from parlance.gateway.clients import GeneratorClient
from parlance.generator.v1 import generator_pb2

CACHE_S = 30.0


class ModelRegistry:
    def __init__(self, generator: GeneratorClient) -> None:
        self.generator = generator
        self._models: list[generator_pb2.ModelInfo] = []
        self._fetched_at = 0.0

    async def list(self) -> list[generator_pb2.ModelInfo]:
        if not self._models or time.monotonic() - self._fetched_at > CACHE_S:
            reply = await self.generator.list_models()
            self._models = list(reply.models)
            self._fetched_at = time.monotonic()
        return self._models

    async def resolve(self, requested: str) -> str:
        """The served model id for `requested`; 404 model_not_found when nothing serves it."""
        models = await self.list()
        for model in models:
            if model.id == requested:
                return model.id
        # Accept case differences ("smollm2-135m-instruct") the way users type names.
        for model in models:
            if model.id.lower() == requested.lower():
                return model.id
        raise errors.model_not_found(requested)
