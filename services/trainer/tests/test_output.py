"""The output folder: named by the digest of its model files, published whole, never
overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from parlance.trainer import output
from parlance.trainer.errors import TrainError


def _staged(out: Path, weights: bytes) -> Path:
    staging = output.staging_dir(out)
    (staging / "model.safetensors").write_bytes(weights)
    (staging / "config.json").write_text("{}")
    output.write_card(
        staging,
        {
            "id": "x",
            "base": {"source": "b", "digest": "d"},
            "data": {"source": "s", "digest": "d", "window": None, "pairs": 1, "prompts": 1},
            "split": dict.fromkeys(
                ("train_pairs", "held_out_pairs", "train_prompts", "held_out_prompts", "seed"), 1
            ),
            "eval": {"held_out_pairwise_accuracy": 0.9},
            "training": {
                "steps": 1,
                "batch_size": 1,
                "pairs_seen": 1,
                "seconds": 1.0,
                "pairs_per_s": 1.0,
                "device": "cpu",
            },
            "versions": {"trl": "1"},
            "model_digest": "d",
        },
    )
    return staging


def test_name_is_the_digest_of_the_model_files(tmp_path: Path) -> None:
    staging = _staged(tmp_path, b"weights-1")
    digest = output.model_digest(staging)
    folder = output.publish(staging, tmp_path, "reward-test")
    assert folder.name == f"reward-test@{digest.removeprefix('sha256:')[:8]}"
    assert not staging.exists()
    assert (folder / "model_card.json").is_file() and (folder / "README.md").is_file()
    # The card is not part of the digest: the name addresses the model itself.
    (folder / "README.md").write_text("edited")
    assert output.model_digest(folder) == digest
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    first = output.publish(_staged(tmp_path, b"weights-1"), tmp_path, "reward-test")
    (first / "marker").write_text("the first copy")
    card = (first / "model_card.json").read_bytes()
    again = _staged(tmp_path, b"weights-1")
    assert output.model_digest(again).removeprefix("sha256:")[:8] == first.name.split("@")[1]
    with pytest.raises(TrainError, match="never overwritten"):
        output.publish(again, tmp_path, "reward-test")
    assert (first / "marker").read_text() == "the first copy"
    assert (first / "model_card.json").read_bytes() == card
    output.discard(again)
    other = output.publish(_staged(tmp_path, b"weights-2"), tmp_path, "reward-test")
    assert other != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_names_that_cannot_be_folders_are_refused() -> None:
    for bad in ("", "a/b", "a@b", ".hidden"):
        with pytest.raises(TrainError, match="--name"):
            output.check_name(bad)
