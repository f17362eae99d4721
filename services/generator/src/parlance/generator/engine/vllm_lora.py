"""LoRA adapters in the vLLM engine: loaded at run time, one LoRARequest per request.

vLLM must be started with LoRA on (the model's setting `enable_lora`, with `max_loras`
adapters per batch and `max_lora_rank` the highest rank it accepts); adapters are then added
with `AsyncLLM.add_lora(LoRARequest(name, int_id, path))` and removed with
`AsyncLLM.remove_lora(int_id)`. vLLM keys its prefix cache by the adapter's *name* (its block
hashes carry `lora_name`), so a name must always mean the same weights: the serving layer
refuses an id that was served with other weights, and each load gets an int id never used
before in this process.

An adapter is removed from vLLM only when no request of ours uses it any more: unloading
marks it retired (new requests: NOT_FOUND), and the last request to finish (or be aborted)
removes it. vLLM's workers would otherwise load it again from its path for a request still
scheduled with it.

Written against vLLM 0.25.1: `AsyncLLM.add_lora`, `remove_lora`, `generate(...,
lora_request=...)`, `vllm.lora.request.LoRARequest`, and `model_config.hf_config`. vLLM is
imported inside methods only, so the CPU test suite imports this module.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parlance.common.errors import NotFound
from parlance.generator.engine.base import AdapterHandle, AdaptersUnsupported
from parlance.generator.engine.lora import (
    AdapterError,
    check_peft_adapter,
    find_peft_folder,
    read_peft_adapter,
    sha256_file,
)

log = logging.getLogger(__name__)


def lora_engine_kwargs(
    *,
    enable_lora: bool,
    max_loras: int = 4,
    max_lora_rank: int = 16,
    max_cpu_loras: int | None = None,
) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments for LoRA; none when it is off (vLLM's default)."""
    if not enable_lora:
        return {}
    kwargs: dict[str, Any] = {
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": max_lora_rank,
    }
    if max_cpu_loras is not None:
        kwargs["max_cpu_loras"] = max_cpu_loras
    return kwargs


@dataclass(slots=True, eq=False)
class VllmAdapter(AdapterHandle):
    lora_request: Any = None
    lora_int_id: int = 0
    removed: bool = False


def _same_base(adapter_base: str, served: str) -> bool:
    """Whether PEFT's base_model_name_or_path and the served model name the same model, by
    their last path component (an HF id and a local copy of it agree)."""
    if not adapter_base or not served:
        return True
    return Path(adapter_base.rstrip("/")).name.lower() == Path(served.rstrip("/")).name.lower()


class VllmLoras:
    """The LoRA adapters of one AsyncLLM."""

    def __init__(
        self, *, max_rank: int | None, served_model: str, request_type: Any = None
    ) -> None:
        # None: vLLM was started without LoRA.
        self._max_rank = max_rank
        # vllm.lora.request.LoRARequest (imported on first use); tests without vLLM give theirs.
        self._request_type = request_type
        self._served_model = served_model
        self._next_int_id = 1
        self.adapters: set[VllmAdapter] = set()

    async def load(self, llm: Any, adapter_id: str, folder: Path) -> VllmAdapter:
        if self._max_rank is None:
            raise AdaptersUnsupported(
                "this vLLM model was started without LoRA: set its setting enable_lora (and "
                "max_lora_rank, max_loras) in GENERATOR_MODELS",
                param="parent",
            )
        peft = read_peft_adapter(find_peft_folder(folder))
        check_peft_adapter(peft, llm.model_config.hf_config, max_rank=self._max_rank)
        if not _same_base(peft.base_model, self._served_model):
            # Logged, not refused: a base may be a local copy under another folder name. The
            # shapes above are what must fit.
            log.warning(
                "adapter's base_model_name_or_path differs from the served model",
                extra={"adapter": adapter_id, "adapter_base": peft.base_model},
            )
        digest = await asyncio.to_thread(sha256_file, peft.weights)
        int_id, self._next_int_id = self._next_int_id, self._next_int_id + 1
        if self._request_type is None:
            from vllm.lora.request import LoRARequest

            self._request_type = LoRARequest
        request = self._request_type(
            lora_name=adapter_id, lora_int_id=int_id, lora_path=str(peft.folder)
        )
        try:
            added = await llm.add_lora(request)
        except Exception as exc:
            if llm.errored:
                raise
            raise AdapterError(f"vLLM could not load {peft.folder}: {exc}") from None
        if added is False:
            raise AdapterError(f"vLLM did not add the adapter {peft.folder}")
        adapter = VllmAdapter(
            adapter_id, str(peft.folder), digest, lora_request=request, lora_int_id=int_id
        )
        self.adapters.add(adapter)
        log.info("LoRA adapter added", extra={"adapter": adapter_id, "lora_int_id": int_id})
        return adapter

    def begin(self, adapter: VllmAdapter) -> Any:
        """The LoRARequest for one request; NotFound once the adapter is unloaded."""
        if adapter.retired:
            raise NotFound(f"model {adapter.adapter_id!r} was unloaded", param="model")
        adapter.users += 1
        return adapter.lora_request

    async def end(self, llm: Any, adapter: VllmAdapter) -> None:
        """A request with the adapter has left vLLM (finished or aborted)."""
        adapter.users -= 1
        if adapter.retired and adapter.users == 0:
            await self._remove(llm, adapter)

    async def unload(self, llm: Any, adapter: VllmAdapter) -> None:
        adapter.retired = True
        if adapter.users == 0:
            await self._remove(llm, adapter)

    async def _remove(self, llm: Any, adapter: VllmAdapter) -> None:
        if adapter.removed:
            return
        adapter.removed = True
        self.adapters.discard(adapter)
        if llm is None or llm.errored:
            return  # a stopped or dead engine holds nothing any more
        try:
            await llm.remove_lora(adapter.lora_int_id)
        except Exception:
            log.exception(
                "vLLM could not remove a LoRA adapter", extra={"adapter": adapter.adapter_id}
            )
        else:
            log.info("LoRA adapter removed", extra={"adapter": adapter.adapter_id})
