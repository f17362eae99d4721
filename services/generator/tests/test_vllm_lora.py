"""LoRA adapters in the vLLM engine, without a GPU: the engine arguments, and VllmLoras (load,
per-request LoRARequest, drain, remove) over real PEFT adapter folders. vLLM cannot run here,
so its AsyncLLM is a test double (`RecordingAsyncLLM`) that records add_lora/remove_lora, and
LoRARequest is a dataclass of vLLM's field names. bench/gpu_lora_check.py drives the real thing
on a GPU."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from transformers import LlamaConfig

from parlance.common.errors import NotFound
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.base import AdaptersUnsupported
from parlance.generator.engine.lora import AdapterError
from parlance.generator.engine.vllm import VllmEngine
from parlance.generator.engine.vllm_lora import VllmLoras, lora_engine_kwargs

TINY = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


@dataclass
class LoRARequestDouble:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class _ModelConfig:
    hf_config: Any


@dataclass
class RecordingAsyncLLM:
    """Test double of vLLM's AsyncLLM: the LoRA calls, recorded."""

    hf_config: Any
    added: list[LoRARequestDouble] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    errored: bool = False
    add_error: Exception | None = None

    @property
    def model_config(self) -> _ModelConfig:
        return _ModelConfig(self.hf_config)

    async def add_lora(self, request: LoRARequestDouble) -> bool:
        if self.add_error is not None:
            raise self.add_error
        self.added.append(request)
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return True


def write_peft(folder: Path, shapes: dict[str, int], *, rank: int = 8) -> Path:
    """A PEFT LoRA folder made by PEFT itself (get_peft_model, save_pretrained)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**shapes))
    lora = LoraConfig(r=rank, lora_alpha=16, target_modules="all-linear")
    get_peft_model(model, lora).save_pretrained(folder / "peft")
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    write_peft(root / "good", TINY)
    write_peft(root / "wide", {**TINY, "hidden_size": 96, "num_attention_heads": 6})
    write_peft(root / "deep", {**TINY, "num_hidden_layers": 3})
    write_peft(root / "rank64", TINY, rank=64)
    saved = root / "saved"
    write_peft(saved, TINY)
    config = json.loads((saved / "peft" / "adapter_config.json").read_text())
    config["modules_to_save"] = ["lm_head"]
    (saved / "peft" / "adapter_config.json").write_text(json.dumps(config))
    (root / "corrupt" / "peft").mkdir(parents=True)
    (root / "corrupt" / "peft" / "adapter_config.json").write_text(
        (root / "good" / "peft" / "adapter_config.json").read_text()
    )
    (root / "corrupt" / "peft" / "adapter_model.safetensors").write_bytes(b"\x10" * 40)
    (root / "empty").mkdir()
    return root


def loras(max_rank: int | None = 16) -> VllmLoras:
    return VllmLoras(max_rank=max_rank, served_model="m", request_type=LoRARequestDouble)


def test_lora_is_off_unless_enabled() -> None:
    assert lora_engine_kwargs(enable_lora=False, max_loras=2) == {}
    assert lora_engine_kwargs(enable_lora=True, max_loras=2, max_lora_rank=32) == {
        "enable_lora": True,
        "max_loras": 2,
        "max_lora_rank": 32,
    }


def test_engine_arguments_from_the_model_settings() -> None:
    plain = VllmEngine.from_settings(GeneratorSettings(engine="vllm"))
    assert "enable_lora" not in plain._engine_kwargs
    settings = GeneratorSettings(
        engine="vllm", enable_lora=True, max_loras=3, max_lora_rank=32, max_cpu_loras=8
    )
    kwargs = VllmEngine.from_settings(settings)._engine_kwargs
    assert {k: kwargs[k] for k in ("enable_lora", "max_loras", "max_lora_rank")} == {
        "enable_lora": True,
        "max_loras": 3,
        "max_lora_rank": 32,
    }
    assert kwargs["max_cpu_loras"] == 8


async def test_load_use_and_drain_before_removal(adapters: Path) -> None:
    llm = RecordingAsyncLLM(LlamaConfig(**TINY))
    manager = loras()
    first = await manager.load(llm, "a@1", adapters / "good")
    second = await manager.load(llm, "b@2", adapters / "good")
    assert [(r.lora_name, r.lora_int_id) for r in llm.added] == [("a@1", 1), ("b@2", 2)]
    assert llm.added[0].lora_path == str(adapters / "good" / "peft")
    assert first.digest == second.digest and len(first.digest) == 64

    request = manager.begin(first)
    assert request is llm.added[0]
    await manager.unload(llm, first)
    assert llm.removed == [], "a request still uses it"
    with pytest.raises(NotFound, match="was unloaded"):
        manager.begin(first)
    await manager.end(llm, first)
    assert llm.removed == [1]
    await manager.unload(llm, second)
    assert llm.removed == [1, 2]
    assert manager.adapters == set()
    # A new load never reuses an int id (vLLM's workers key loaded adapters by it).
    third = await manager.load(llm, "a@1", adapters / "good")
    assert third.lora_int_id == 3


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("wide", "an adapter trained on another base"),
        ("deep", "past the parent's 2 layers"),
        ("rank64", "over this engine's max_lora_rank 16"),
        ("saved", "modules_to_save"),
        ("corrupt", "is corrupt"),
        ("empty", "no PEFT adapter"),
    ],
)
async def test_refusals_add_nothing(adapters: Path, folder: str, message: str) -> None:
    llm = RecordingAsyncLLM(LlamaConfig(**TINY))
    manager = loras()
    with pytest.raises(AdapterError, match=message):
        await manager.load(llm, "x@1", adapters / folder)
    assert llm.added == [] and manager.adapters == set()


async def test_without_enable_lora_adapters_are_a_failed_precondition(adapters: Path) -> None:
    with pytest.raises(AdaptersUnsupported, match="enable_lora"):
        await loras(max_rank=None).load(RecordingAsyncLLM(LlamaConfig(**TINY)), "x", adapters)


async def test_vllm_refusing_the_adapter_is_a_clear_error(adapters: Path) -> None:
    llm = RecordingAsyncLLM(LlamaConfig(**TINY), add_error=RuntimeError("bad target module"))
    manager = loras()
    with pytest.raises(AdapterError, match=r"vLLM could not load .*bad target module"):
        await manager.load(llm, "x@1", adapters / "good")
    assert manager.adapters == set()
    # A dead engine is not the adapter's fault: the error goes up as it is.
    llm.errored = True
    with pytest.raises(RuntimeError):
        await manager.load(llm, "x@1", adapters / "good")
