"""The proof that `parlance-train reward` learns, on CPU and bounded: simulated users who
prefer answers written as a bulleted list (the same points as prose lose), a few hundred pairs
over varied prompts, all-MiniLM-L6-v2 with a fresh score head, a fixed seed and 10 steps
(learning rate 3e-4). The held-out pairs answer prompts no training pair answers; the bar is
the issue's (>= 0.85). About a minute of CPU on 2 cores (more wall time on a busy machine);
bench/ holds the longer run and a harder trait."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parlance.trainer import synthetic
from parlance.trainer.cli import main
from parlance.trainer.output import model_digest

# The project's 300 s default is too tight on a busy machine: with a load of 10 on the 2-core
# dev machine this run took over 5 min of wall time for ~40 s of CPU.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_reward_model_learns_the_hidden_preference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text(synthetic.jsonl(synthetic.pairs(200, trait="bullets", seed=7)))
    out = tmp_path / "models"
    args = ["reward", "--data", str(data), "--out", str(out), "--name", "reward-bullets"]
    args += ["--max-steps", "10", "--batch-size", "8", "--learning-rate", "3e-4"]
    args += ["--eval-fraction", "0.25", "--seed", "0"]
    assert main(args) == 0, capsys.readouterr().err
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.parent == out and folder.is_dir()

    card = json.loads((folder / "model_card.json").read_text())
    print("held-out pairwise accuracy:", card["eval"], card["training"])
    assert card["eval"]["held_out_pairwise_accuracy"] >= 0.85
    # The card describes this run, and the name is the digest of the model files.
    assert card["id"] == folder.name
    assert folder.name == "reward-bullets@" + model_digest(folder).removeprefix("sha256:")[:8]
    assert card["model_digest"] == model_digest(folder)
    assert card["training"]["steps"] == 10
    assert card["training"]["pairs_seen"] == 80
    split = card["split"]
    assert split["train_pairs"] + split["held_out_pairs"] == card["data"]["pairs"]
    assert split["held_out_pairs"] >= 50
    assert card["versions"]["trl"] == "1.16.0"
    assert card["serving"]["chat_template"] == "parlance-plain"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (folder / name).is_file()
    assert "held-out pairwise accuracy" in (folder / "README.md").read_text()
    # Nothing else was left in the output directory (no staging folder).
    assert [p.name for p in out.iterdir()] == [folder.name]
