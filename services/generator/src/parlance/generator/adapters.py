"""LoRA adapters served as models of their own (LoadModel with a parent).

An adapter is listed and routed like any chat model: its id, its parent's context window and
engine, and `parent` set. Its requests run on the parent's engine (the same llama.cpp pool or
vLLM instance) with the adapter applied to them only. The serving layer keeps, per adapter id,
the digest of the weights it was first served with: an id is never given to other weights in
this process (vLLM keys its prefix cache by adapter name, so other weights under an old name
could be served stale cached blocks).
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from parlance.common.errors import AlreadyExists, InvalidArgument, NotFound, ParlanceError
from parlance.generator.engine.base import (
    AdapterHandle,
    ChatMessage,
    EmbeddingEngine,
    Engine,
    EngineStats,
    GenerationRequest,
    GenerationStep,
    ModelInfo,
    ModelTask,
    RewardEngine,
)
from parlance.generator.engine.lora import AdapterError

AnyEngine = Engine | EmbeddingEngine | RewardEngine

log = logging.getLogger(__name__)

# What reading or parsing a malformed adapter can raise besides AdapterError (a reader's own
# gap): still the caller's bad input, an INVALID_ARGUMENT, not an INTERNAL.
_READ_ERRORS = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    RecursionError,
    OSError,
    struct.error,
)


class AdapterModel(Engine):
    """A LoRA adapter as a chat model: its parent's engine, the adapter on for each request."""

    def __init__(self, parent_id: str, parent: Engine, handle: AdapterHandle) -> None:
        self.name = parent.name
        self.parent_id = parent_id
        self.parent = parent
        self.handle = handle
        self._created = int(time.time())

    async def start(self) -> None:
        """Nothing to do: the parent loaded the adapter before this was made."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationStep, None]:
        return self.parent.generate_with_adapter(request, self.handle)

    async def abort(self, request_id: str) -> None:
        await self.parent.abort(request_id)

    async def count_tokens(
        self, *, messages: Sequence[ChatMessage] | None = None, prompt: str | None = None
    ) -> int:
        # A LoRA changes weights, never the tokenizer or the chat template.
        return await self.parent.count_tokens(messages=messages, prompt=prompt)

    def model_info(self) -> ModelInfo:
        return dataclasses.replace(
            self.parent.model_info(),
            id=self.handle.adapter_id,
            created=self._created,
            parent=self.parent_id,
        )

    def stats(self) -> EngineStats:
        # Its requests are counted in the parent's stats (they run on the parent's slots).
        return EngineStats(running=self.handle.users, waiting=0)

    async def close(self) -> None:
        """Unloads the adapter (freed once its running requests end)."""
        await self.parent.unload_adapter(self.handle)


class AdapterRegistry:
    """Loads adapters onto parents and remembers which weights each id was served with."""

    def __init__(self) -> None:
        self._digests: dict[str, str] = {}

    async def load(
        self,
        models: dict[str, AnyEngine],
        adapter_id: str,
        parent_id: str,
        folder: Path,
        settings: dict[str, str],
    ) -> AdapterModel:
        """The adapter as a model, not yet in `models` (the caller adds it). Errors leave every
        engine as it was."""
        if settings:
            raise InvalidArgument(
                f"a LoRA adapter takes no settings (it runs in its parent's engine); got "
                f"{sorted(settings)}",
                param="settings",
            )
        if adapter_id in models:
            raise AlreadyExists(f"model {adapter_id!r} is served already", param="id")
        parent = _parent_engine(models, parent_id)
        try:
            handle = await parent.load_adapter(adapter_id, folder)
        except AdapterError as exc:
            raise InvalidArgument(
                f"cannot serve {folder} as a LoRA adapter of {parent_id!r}: {exc}", param="path"
            ) from None
        except ParlanceError:
            raise
        except _READ_ERRORS as exc:
            log.warning("adapter %s could not be read", folder, exc_info=True)
            raise InvalidArgument(
                f"cannot serve {folder} as a LoRA adapter of {parent_id!r}: it could not be "
                f"read ({type(exc).__name__}: {exc})",
                param="path",
            ) from None
        earlier = self._digests.get(adapter_id)
        if earlier is not None and earlier != handle.digest:
            await parent.unload_adapter(handle)
            raise AlreadyExists(
                f"adapter id {adapter_id!r} was served with other weights in this process "
                f"(sha256 {earlier[:12]}..., now {handle.digest[:12]}...); an id is never "
                "reused for other weights: load them under a new id",
                param="id",
            )
        self._digests[adapter_id] = handle.digest
        return AdapterModel(parent_id, parent, handle)


def _parent_engine(models: dict[str, AnyEngine], parent_id: str) -> Engine:
    parent = models.get(parent_id)
    if parent is None:
        served = ", ".join(repr(m) for m in models)
        raise NotFound(
            f"parent model {parent_id!r} is not served here (this generator serves {served})",
            param="parent",
        )
    if isinstance(parent, AdapterModel):
        raise InvalidArgument(
            f"parent {parent_id!r} is itself an adapter (of {parent.parent_id!r}); an adapter "
            "applies to a base chat model",
            param="parent",
        )
    if not isinstance(parent, Engine) or parent.task is not ModelTask.CHAT:
        raise InvalidArgument(
            f"parent {parent_id!r} serves the {parent.task.value} task; LoRA adapters apply to "
            "chat models",
            param="parent",
        )
    return parent
