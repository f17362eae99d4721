"""`parlance-train dpo` and `sft` with the real TRL, PEFT and llama.cpp converter, bounded: a
few dozen short pairs (simulated users who prefer bulleted answers), a handful of steps at a
short max length, on the embedded SmolLM2-135M-Instruct (its GGUF, dequantized once into the
cache). One DPO adapter is trained per session and shared by the tests that read it.

The first run on a machine also dequantizes the GGUF (~10 s of CPU) and takes llama.cpp's
converter from llama-cpp-python's sdist (pip download, once); both are cached.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from parlance.testing.dpo_adapter import PARITY_PROMPTS, DpoAdapter
from parlance.trainer import adapter, gguf_lora, lm_base, parity, synthetic
from parlance.trainer.cli import main
from parlance.trainer.output import folder_digest

# CPU training under the shared machine's load: many minutes of wall time for a minute of
# CPU (the session's DPO run is charged to the first test that uses it).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

PROMPT = "Any tips for a vegetable garden?"


def _train(tmp: Path, command: str, data: Path, extra: list[str]) -> Path:
    out = tmp / "adapters"
    code = main([command, "--data", str(data), "--out", str(out), *extra])
    assert code == 0
    [folder] = [p for p in out.iterdir()]
    return folder


# The session's DPO adapter is parlance.testing's `dpo_adapter` fixture (dpo_adapter.py: 16
# prompts of the bullets trait, seed 11, 5 steps of 2 pairs at 64 tokens, learning rate 1e-3,
# a quarter held out, one torch thread, greedy parity on 4 prompts), shared with
# tests/test_adapter_loop.py, which serves it.


def _manifest(folder: Path) -> dict:
    return json.loads((folder / adapter.MANIFEST).read_text())


def test_dpo_learns_and_the_manifest_says_so(dpo_adapter: DpoAdapter) -> None:
    m = _manifest(dpo_adapter.folder)
    print(json.dumps({k: m[k] for k in ("eval", "training", "split")}, indent=1))
    before, after = m["eval"]["held_out_before"], m["eval"]["held_out_after"]
    # Before training the adapter is zero: the policy is its reference, the loss is ln 2.
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert after["loss"] < before["loss"] - 0.05
    assert after["rewards_accuracies"] > before["rewards_accuracies"]
    assert after["rewards_margins"] > 0
    tr = m["training"]
    assert tr["loss_last"] < tr["loss_first"]
    assert tr["steps"] == 5 and len(tr["loss_curve"]) == 5
    assert tr["rows_seen"] == 10
    assert (tr["device"], tr["bf16"], tr["gradient_checkpointing"]) == ("cpu", False, False)
    assert tr["trainer"] == "trl.DPOTrainer" and tr["beta"] == 0.1


def test_dpo_manifest_names_base_data_and_adapter(dpo_adapter: DpoAdapter) -> None:
    folder, m = dpo_adapter.folder, _manifest(dpo_adapter.folder)
    digest = folder_digest(folder, skip=adapter.CARD_FILES)
    assert m["adapter_digest"] == digest
    assert folder.name == m["id"] == f"dpo-bullets@{digest.removeprefix('sha256:')[:8]}"
    assert m["format"] == adapter.MANIFEST_FORMAT and m["method"] == "dpo"
    gguf = lm_base.embedded_gguf()
    assert m["base"]["source"] == lm_base.EMBEDDED_LM
    assert m["base"]["gguf_file"] == gguf.name
    assert m["base"]["gguf_digest"] == lm_base.file_digest(gguf)
    raw = dpo_adapter.data.read_bytes()
    data = m["data"]
    assert data["digest"] == "sha256:" + __import__("hashlib").sha256(raw).hexdigest()
    assert data["rows"] == len(raw.decode().splitlines()) and data["kind"] == "preference"
    split = m["split"]
    assert split["train_rows"] + split["held_out_rows"] == data["rows"]
    assert split["held_out_rows"] >= 1 and split["held_out_prompts"] >= 1
    assert m["lora"]["r"] == 16 and m["lora"]["modules_to_save"] is None
    assert m["lora"]["target_modules"] == sorted(
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    )
    assert m["gguf"]["general.architecture"] == "llama" and m["gguf"]["tensors"] == 30 * 7 * 2
    assert m["versions"]["trl"] == "1.16.0" and m["versions"]["gguf"] == "0.19.0"
    assert "dpo-bullets@" in (folder / adapter.README).read_text()
    # Nothing else is left in the output directory (no staging folder).
    assert [p.name for p in dpo_adapter.out.iterdir()] == [folder.name]


def test_peft_folder_has_no_lm_head(dpo_adapter: DpoAdapter) -> None:
    from safetensors import safe_open

    peft = dpo_adapter.folder / adapter.PEFT_DIR
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not config.get("modules_to_save")
    with safe_open(str(peft / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert len(names) == 30 * 7 * 2
    assert not any("lm_head" in n or "embed_tokens" in n for n in names)


def _greedy(lora: Path | None) -> str:
    from llama_cpp import Llama

    kwargs = {"lora_path": str(lora)} if lora else {}
    llm = Llama(
        model_path=str(lm_base.embedded_gguf()),
        n_ctx=256,
        # One thread: two spin against the rest of a busy 2-core machine (both answers are
        # made alike, so the comparison does not depend on it).
        n_threads=1,
        seed=0,
        verbose=False,
        **kwargs,
    )
    try:
        out = llm.create_chat_completion(
            [{"role": "user", "content": PROMPT}], max_tokens=48, temperature=0.0
        )
        return str(out["choices"][0]["message"]["content"])
    finally:
        llm.close()


def test_gguf_lora_loads_in_llama_cpp_and_changes_greedy_output(dpo_adapter: DpoAdapter) -> None:
    lora = dpo_adapter.folder / adapter.GGUF_FILE
    base_answer, adapted = _greedy(None), _greedy(lora)
    print("base:", repr(base_answer), "\nadapter:", repr(adapted))
    assert adapted != base_answer


def test_manifest_has_the_greedy_parity_of_both_engines(dpo_adapter: DpoAdapter) -> None:
    """parlance-train measured the adapter in transformers (PEFT) and llama.cpp (GGUF LoRA) on
    the fixture's prompts before publishing it."""
    p = _manifest(dpo_adapter.folder)["parity"]
    print(json.dumps({k: v for k, v in p.items() if k != "answers"}, indent=1))
    n = PARITY_PROMPTS
    assert (p["prompts"], p["max_new_tokens"], p["unit"]) == (n, parity.MAX_NEW_TOKENS, "tokens")
    pairs = [p["adapter"], p["base"], *p["adapter_vs_base"].values()]
    for figures in pairs:
        assert figures["prompts"] == n and 0 <= figures["exact"] <= n
        assert figures["exact_rate"] == round(figures["exact"] / n, 4)
        assert 0 <= figures["mean_common_prefix"] <= figures["mean_length"]
        assert 0 < figures["mean_length"] <= parity.MAX_NEW_TOKENS
    # The same prompt tokens reach both engines: the base's answers start alike in both
    # (they may part later: Q4_1 matmuls in llama.cpp, dequantized float32 in transformers).
    assert p["base"]["mean_common_prefix"] >= 1
    # The adapter changes answers in both engines, and moves both engines' logits alike.
    assert p["adapter_vs_base"]["transformers"]["exact"] < n
    assert p["adapter_vs_base"]["llamacpp"]["exact"] < n
    delta = p["first_token_logit_delta"]
    assert delta["llamacpp"] > parity.WEAK_SHARE * delta["transformers"] > 0
    answers = p["answers"]
    assert sorted(answers) == [
        "llamacpp_adapter",
        "llamacpp_base",
        "transformers_adapter",
        "transformers_base",
    ]
    assert all(len(a) == n and all(a) for a in answers.values())
    assert p["engines"]["llamacpp"]["weights"] == lm_base.EMBEDDED_FILE
    assert p["engines"]["llamacpp"]["threads"] == 1  # the fixture's --threads 1
    assert (
        "greedy parity | transformers (PEFT, float32) vs llama.cpp"
        in (dpo_adapter.folder / adapter.README).read_text()
    )


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT conversations: each prompt with its preferred (bulleted) answer."""
    data = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    rows = [
        {"messages": p["prompt"] + p["chosen"]}
        for p in synthetic.pairs(12, trait="bullets", seed=5, max_per_prompt=1)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


SFT_ARGS = ["--max-steps", "3", "--batch-size", "2", "--max-length", "48"]
SFT_ARGS += ["--learning-rate", "1e-3", "--eval-fraction", "0.25", "--min-examples", "10"]
# One torch thread, as the session's DPO run (parlance.testing.dpo_adapter says why). No
# parity: the DPO adapter's manifest has it, and this test trains twice.
SFT_ARGS += ["--threads", "1", "--parity-prompts", "0"]


def test_sft_learns_and_a_rerun_never_reuses_the_name(
    sft_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _train(tmp_path, "sft", sft_data, SFT_ARGS)
    m = _manifest(folder)
    print(json.dumps(m["eval"]), m["training"]["loss_curve"])
    assert folder.name.startswith("sft-SmolLM2-135M-Instruct@")
    assert m["eval"]["held_out_after"]["loss"] < m["eval"]["held_out_before"]["loss"]
    assert m["data"]["kind"] == "sft" and m["training"]["trainer"] == "trl.SFTTrainer"
    assert m["training"]["steps"] == 3 and m["training"]["beta"] is None
    assert m["parity"] == {"skipped": "--parity-prompts 0"}
    assert "greedy parity | skipped: --parity-prompts 0" in (folder / adapter.README).read_text()
    assert (folder / adapter.GGUF_FILE).is_file()
    gguf_lora.check(folder / adapter.GGUF_FILE)
    # The same run again makes the same adapter files (CPU, same seed): its name exists, so
    # it is refused and nothing is written or left behind.
    before = sorted(p.name for p in folder.iterdir())
    capsys.readouterr()
    code = main(["sft", "--data", str(sft_data), "--out", str(folder.parent), *SFT_ARGS])
    assert code == 1
    assert "exists already" in capsys.readouterr().err
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == before


# --- refusals: clear message, exit 1, nothing written ----------------------------------------


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    capsys.readouterr()
    code = main([*args, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    assert not out.exists() or not any(out.iterdir())
    return captured.err


def test_bad_inputs_are_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sft_data: Path
) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    err = _refused(["dpo", "--data", str(empty)], capsys, out)
    assert "holds no preference pairs" in err
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(synthetic.pairs(1, seed=1)[0])
    bad.write_text(good + "\n{not json\n" + '{"prompt": "q", "chosen": "a"}\n')
    err = _refused(["dpo", "--data", str(bad)], capsys, out)
    assert "2 of 3 lines are not usable" in err
    assert "line 2: not valid JSON" in err and "line 3: missing 'rejected'" in err
    # Preference pairs given to sft, and conversations that do not end with an answer.
    err = _refused(["sft", "--data", str(bad)], capsys, out)
    assert "line 1: a preference pair: train it with `parlance-train dpo`" in err
    ends_with_user = tmp_path / "user.jsonl"
    ends_with_user.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    err = _refused(["sft", "--data", str(ends_with_user)], capsys, out)
    assert "must end with the assistant's answer" in err
    err = _refused(["sft", "--data", str(sft_data), "--min-examples", "500"], capsys, out)
    assert "holds 12 examples; at least 500 are needed (--min-examples)" in err
    enough = ["sft", "--data", str(sft_data), "--min-examples", "10"]
    err = _refused([*enough, "--base", str(tmp_path / "no-such-base")], capsys, out)
    assert "no-such-base: no such folder or file" in err
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    err = _refused([*enough, "--base", str(not_a_model)], capsys, out)
    assert "no config.json there" in err
    err = _refused([*enough, "--name", "a/b"], capsys, out)
    assert "--name 'a/b'" in err
    err = _refused(["dpo", "--data", str(tmp_path / "missing.jsonl")], capsys, out)
    assert "cannot read" in err


def test_converter_is_llama_cpp_the_generator_serves_with() -> None:
    """The converter's llama.cpp is the one whose engine loads the GGUF LoRA."""
    root = Path(__file__).resolve().parents[3]
    pyproject = (root / "services/generator/pyproject.toml").read_text()
    assert f'"llama-cpp-python=={gguf_lora.LLAMA_CPP_PYTHON}"' in pyproject
