"""One DPO adapter per test session, trained by the real `parlance-train dpo` (TRL's DPOTrainer
with a PEFT LoRA on the embedded SmolLM2-135M-Instruct, converted to a GGUF LoRA by llama.cpp's
converter), bounded: 16 prompts of simulated users who prefer bulleted answers (seed 11, about
two dozen pairs), 5 steps of 2 pairs at 64 tokens, one torch thread. DPO costs minutes of CPU
on a busy 2-core machine, so the suites that need a trained adapter share this one run: the
trainer's tests check what it wrote, tests/test_adapter_loop.py registers and serves a copy.

One torch thread: two spin against the other processes of a busy 2-core machine (the reward
trainer's 16 steps took 107 s with 2 threads against 30 s with 1 at load 12)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NAME = "dpo-bullets"
PROMPTS = 16
DATA_SEED = 11
ARGS = ["--max-steps", "5", "--batch-size", "2", "--max-length", "64"]
ARGS += ["--learning-rate", "1e-3", "--eval-fraction", "0.25", "--seed", "0", "--threads", "1"]


@dataclass(frozen=True)
class DpoAdapter:
    """The session's adapter: its folder (as parlance-train writes it), the JSONL it was
    trained on and the --out directory (which holds nothing else)."""

    folder: Path
    data: Path
    out: Path


def train_dpo_adapter(workdir: Path) -> DpoAdapter:
    """Runs the trainer's CLI in process on synthetic preferences written into workdir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Imported here: only the suites that train pay for torch, TRL and PEFT.
    from parlance.trainer import synthetic
    from parlance.trainer.cli import main

    data = workdir / "pairs.jsonl"
    data.write_text(synthetic.jsonl(synthetic.pairs(PROMPTS, trait="bullets", seed=DATA_SEED)))
    out = workdir / "adapters"
    code = main(["dpo", "--data", str(data), "--out", str(out), "--name", NAME, *ARGS])
    if code != 0:
        raise RuntimeError(f"parlance-train dpo exited with {code} (its stderr is above)")
    [folder] = list(out.iterdir())
    return DpoAdapter(folder, data, out)
