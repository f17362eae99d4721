"""The models behind the gateway: the union of what the generator targets serve, aliases, and
the resolution of a request's `model` (id, alias, or a case variant) for a task.

Resolution order: an exact model id, an exact alias, then the same without regard to case
("smollm2-135m-instruct"), the way users type names. `default`, unless GATEWAY_MODEL_ALIASES
defines it, is the first chat model the targets list. Unknown: 404 model_not_found; a model
of another task (an embedding model asked to chat): 400 naming its task.

An alias may split its traffic over several models by weight (splits.py): the user's cohort
(a hash of alias and user id) picks one, among the split's models that are served now. The
aliases of GATEWAY_MODEL_ALIASES can be replaced, and new ones added, at run time by the
admin API (`overrides`, kept in Redis by model_registry.py).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from parlance.gateway import errors, splits
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.metrics import SPLIT_CHOICES
from parlance.gateway.routing import task_of
from parlance.gateway.splits import Weights
from parlance.generator.v1 import generator_pb2

# The endpoint each task serves, for error messages.
TASK_ENDPOINTS = {"chat": "/v1/chat/completions", "embed": "/v1/embeddings"}
TASK_NOUNS = {"chat": "a chat model", "embed": "an embedding model"}
# An unknown model makes the registry re-read the targets' listings, at most this often.
REFRESH_ON_MISS_S = 2.0
DEFAULT_ALIAS = "default"


class ModelRegistry:
    def __init__(
        self, generator: GeneratorClient, aliases: Mapping[str, object] | None = None
    ) -> None:
        self.generator = generator
        # GATEWAY_MODEL_ALIASES (a model id or {model id: weight} each), and the admin API's
        # run-time aliases, which take precedence over a configured one of the same name.
        self.configured: dict[str, Weights] = splits.parse_aliases(aliases or {})
        self.overrides: dict[str, Weights] = {}

    @property
    def aliases(self) -> dict[str, Weights]:
        return self.configured | self.overrides

    async def list(self) -> list[generator_pb2.ModelInfo]:
        """Every model some generator target lists (each id once)."""
        return list((await self.generator.list_models()).models)

    async def get(self, model_id: str) -> generator_pb2.ModelInfo | None:
        return next((m for m in await self.list() if m.id == model_id), None)

    def _lookup(
        self,
        models: builtins.list[generator_pb2.ModelInfo],
        requested: str,
        task: str,
        user: str | None = None,
    ) -> str | None:
        ids = [m.id for m in models]
        if requested in ids:
            return requested
        aliases = self.aliases
        if requested in aliases:
            return self._split_choice(requested, models, task, user)
        lowered = requested.lower()
        for model_id in ids:
            if model_id.lower() == lowered:
                return model_id
        for alias in aliases:
            if alias.lower() == lowered:
                return self._split_choice(alias, models, task, user)
        if lowered == DEFAULT_ALIAS:
            return next((m.id for m in models if task_of(m) == task), None)
        return None

    def _split_choice(
        self,
        alias: str,
        models: builtins.list[generator_pb2.ModelInfo],
        task: str,
        user: str | None,
    ) -> str:
        """The alias's model for this user, among those of its models serving `task` now (a
        split's adapter that is down sends its users to the others, not to an error)."""
        weights = self.aliases[alias]
        served = {m.id for m in models if task_of(m) == task}
        live = tuple((m, w) for m, w in weights if m in served and w > 0)
        chosen = splits.choose(alias, live or weights, user)
        if len(live) > 1:
            SPLIT_CHOICES.labels(alias, chosen).inc()
        return chosen

    async def resolve(self, requested: str, task: str = "chat", user: str | None = None) -> str:
        """The served model id for `requested`, checked to serve `task` ("chat", "embed").
        404 model_not_found when nothing serves it; 400 when it is a model of another task.
        `user` picks the model of a split alias (None: its heaviest)."""
        models = await self.list()
        model_id = self._lookup(models, requested, task, user)
        if (model_id is None or model_id not in {m.id for m in models}) and (
            self.generator.seconds_since_refresh() > REFRESH_ON_MISS_S
        ):
            # A generator may have gained the model since the last listing.
            await self.generator.refresh()
            models = await self.list()
            model_id = self._lookup(models, requested, task, user)
        info = next((m for m in models if m.id == model_id), None)
        if info is None:
            if model_id is not None and model_id != requested:
                raise errors.APIError(
                    404,
                    f"The model '{requested}' is an alias of '{model_id}', which no generator "
                    "serves.",
                    param="model",
                    code="model_not_found",
                )
            raise errors.model_not_found(requested)
        served_task = task_of(info)
        if served_task != task:
            raise errors.invalid_request(
                f"The model '{info.id}' is {TASK_NOUNS.get(served_task, served_task)} (task "
                f"'{served_task}'); it cannot serve {task} requests. Use "
                f"{TASK_ENDPOINTS.get(served_task, 'another endpoint')} with it, or "
                f"{TASK_NOUNS.get(task, task)} here.",
                param="model",
                code="model_task_mismatch",
            )
        return info.id

    async def cards(self) -> builtins.list[dict[str, Any]]:
        """/v1/models entries: aliases first (each with `alias_for`, its heaviest model, whose
        task and window it shows, and for a split `split`: model id → percent of users; only
        configured and run-time aliases are listed), then every model."""
        models = await self.list()
        by_id = {m.id: m for m in models}
        cards = []
        for alias, weights in self.aliases.items():
            info = by_id.get(splits.primary(weights))
            if info is None:
                continue
            card = {**_card(info), "id": alias, "alias_for": info.id}
            if len(weights) > 1:
                card["split"] = splits.as_percentages(weights)
            cards.append(card)
        return cards + [_card(m) for m in models]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model: task and how many of the targets listing it serve it now (readiness)."""
        return self.generator.status()


def _card(info: generator_pb2.ModelInfo) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by or "parlance",
        "task": task_of(info),
        "max_model_len": info.max_model_len or None,
        "engine": info.engine or None,
    }
    if info.dimensions:
        card["dimensions"] = info.dimensions
    if info.parent:
        card["parent"] = info.parent
    return card
