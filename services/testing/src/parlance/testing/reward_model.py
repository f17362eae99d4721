"""One reward model per test session, trained by the real `parlance-train reward` (TRL's
RewardTrainer on the embedded all-MiniLM-L6-v2, bounded: 10 CPU steps). Training costs about a
minute of CPU, so the suites that need a trained reward model share this one run: the trainer's
test checks what the run wrote, the generator's tests serve a copy of the folder.

The simulated users prefer answers written as a bulleted list (the same points as prose lose):
200 pairs over varied prompts (seed 7), a quarter held out, learning rate 3e-4, sequences of at
most 128 tokens."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

NAME = "reward-bullets"
TRAIT: Final = "bullets"
PAIRS = 200
DATA_SEED = 7
STEPS = 10
BATCH_SIZE = 8
MAX_LENGTH = 128


@dataclass(frozen=True)
class RewardTraining:
    """One `parlance-train reward` run as its caller saw it."""

    exit_code: int
    stdout: str
    stderr: str
    out: Path  # the --out folder

    @property
    def folder(self) -> Path:
        """The model folder, which the CLI prints on its last line of stdout."""
        return Path(self.stdout.strip().splitlines()[-1])


def train_reward_model(workdir: Path) -> RewardTraining:
    """Runs the trainer's CLI in process on synthetic preferences written into workdir."""
    # Nothing may come from a model hub: the embedded MiniLM is a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Imported here: only the suites that train pay for torch and TRL.
    from parlance.trainer import synthetic
    from parlance.trainer.cli import main

    data = workdir / "prefs.jsonl"
    data.write_text(synthetic.jsonl(synthetic.pairs(PAIRS, trait=TRAIT, seed=DATA_SEED)))
    out = workdir / "models"
    args = ["reward", "--data", str(data), "--out", str(out), "--name", NAME]
    args += ["--max-steps", str(STEPS), "--batch-size", str(BATCH_SIZE)]
    args += ["--learning-rate", "3e-4", "--max-length", str(MAX_LENGTH)]
    args += ["--eval-fraction", "0.25", "--seed", "0"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        exit_code = main(args)
    return RewardTraining(exit_code, stdout.getvalue(), stderr.getvalue(), out)
