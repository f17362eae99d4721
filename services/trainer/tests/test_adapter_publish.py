"""adapter.run publishes nothing when the parity check refuses the adapter: the staging
folder is discarded and no `<name>@<hash>` folder appears. Fast: the base, the training, the
conversion and both engines' greedy answers are stand-ins (the real ones are in
test_adapter_train.py, marked slow); parity.measure and its detector (judge, lora_not_applied)
are the real code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parlance.trainer import adapter, gguf_lora, lm_base, lora_train, parity, synthetic
from parlance.trainer.errors import TrainError
from parlance.trainer.source import Loaded


class FakeTokenizer:
    """A test double: enough of a chat tokenizer for the length count and the parity prompts."""

    eos_token_id = 2
    pad_token_id = 0

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        text = " ".join(m["content"] for m in messages)
        return [3 + (ord(c) % 50) for c in text[:40]]


class FakeConfig:
    max_position_embeddings = 2048


class FakeModel:
    config = FakeConfig()


def fake_train(
    settings: Any, model: Any, tokenizer: Any, train: Any, held_out: Any, peft_dir: Path
) -> dict[str, Any]:
    peft_dir.mkdir(parents=True)
    config = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"]}
    (peft_dir / "adapter_config.json").write_text(json.dumps(config))
    (peft_dir / "adapter_model.safetensors").write_bytes(b"weights")
    loss = {"loss": 0.69}
    training: dict[str, Any] = {"steps": 1, "loss_first": 0.69, "loss_last": 0.69, "rows_seen": 2}
    training |= {"seconds": 0.1, "rows_per_s": 20.0, "device": "cpu"}
    return {"held_out_before": loss, "held_out_after": loss, "training": training}


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base_folder = tmp_path / "base"
    base_folder.mkdir()
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"gguf")
    base = lm_base.LMBase(
        source="stand-in",
        folder=base_folder,
        digest="sha256:0",
        gguf_digest="sha256:1",
        gguf_path=gguf,
        model=FakeModel(),
        tokenizer=FakeTokenizer(),
    )
    monkeypatch.setattr(gguf_lora, "converter_dir", lambda: tmp_path)
    monkeypatch.setattr(lm_base, "load", lambda source: base)
    monkeypatch.setattr(lora_train, "train", fake_train)
    monkeypatch.setattr(gguf_lora, "convert", lambda peft, folder, out: out.write_bytes(b"lora"))
    monkeypatch.setattr(gguf_lora, "check", lambda path: {"tensors": 2})
    # The PEFT adapter changes transformers' answers; llama.cpp answers as its base with the
    # GGUF LoRA and its logits barely move: the conversion lost the adapter.
    hf = parity.Answers(base=[[5, 6]], adapter=[[7, 8]], logit_delta=2.0)
    cpp = parity.Answers(base=[[5, 6]], adapter=[[5, 6]], logit_delta=0.0)
    monkeypatch.setattr(parity, "_transformers", lambda *args: hf)
    monkeypatch.setattr(parity, "_llamacpp_pair", lambda *args: cpp)


def job(out: Path, parity_prompts: int) -> adapter.AdapterJob:
    return adapter.AdapterJob(
        method="dpo",
        base="stand-in",
        out=out,
        name="dpo-test",
        min_rows=10,
        eval_fraction=0.25,
        parity_prompts=parity_prompts,
    )


def loaded() -> Loaded:
    rows = synthetic.pairs(16, trait="bullets", seed=11)
    return Loaded("".join(json.dumps(r) + "\n" for r in rows).encode(), "pairs.jsonl")


@pytest.mark.usefixtures("stand_ins")
def test_a_failed_parity_check_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "adapters"
    with pytest.raises(TrainError, match="the GGUF LoRA did not apply"):
        adapter.run(job(out, parity_prompts=1), loaded())
    # No published folder, and the hidden staging folder is gone too.
    assert list(out.iterdir()) == []


@pytest.mark.usefixtures("stand_ins")
def test_the_same_stand_ins_publish_when_parity_is_skipped(tmp_path: Path) -> None:
    """The stand-ins are enough for run() to publish: the refusal above is parity's."""
    out = tmp_path / "adapters"
    folder = adapter.run(job(out, parity_prompts=0), loaded())
    assert [p.name for p in out.iterdir()] == [folder.name]
    assert folder.name.startswith("dpo-test@")
    manifest = json.loads((folder / adapter.MANIFEST).read_text())
    assert manifest["parity"] == {"skipped": "--parity-prompts 0"}
