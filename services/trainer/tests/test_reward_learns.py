"""The proof that `parlance-train reward` learns, on CPU and bounded: simulated users who
prefer answers written as a bulleted list (the same points as prose lose), a few hundred pairs
over varied prompts, all-MiniLM-L6-v2 with a fresh score head, a fixed seed and 10 steps
(learning rate 3e-4). The held-out pairs answer prompts no training pair answers; the bar is
the issue's (>= 0.85). The run is the session's one reward training (parlance.testing's
`reward_training` fixture, shared with the generator's reward tests): about a minute of CPU on
2 cores (more wall time on a busy machine); bench/ holds the longer run and a harder trait."""

from __future__ import annotations

import json

import pytest

from parlance.testing.reward_model import RewardTraining
from parlance.trainer.output import model_digest

# The project's 300 s default is too tight on a busy machine: with a load of 10 on the 2-core
# dev machine this run took over 5 min of wall time for ~40 s of CPU.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_reward_model_learns_the_hidden_preference(reward_training: RewardTraining) -> None:
    assert reward_training.exit_code == 0, reward_training.stderr
    folder = reward_training.folder
    out = reward_training.out
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
