"""The trainer's output: a content-addressed model folder `<name>@<hash8>` with a model card.

The hash is the SHA-256 of the model's files (weights, config, tokenizer: every file but the
card), so a name always means one model. The folder is written under a hidden staging name in
the output directory and renamed into place when complete; an existing folder is never
written to (a rename onto it is refused), so a reader never sees half a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from parlance.trainer.errors import TrainError

CARD_JSON = "model_card.json"
CARD_README = "README.md"
_CARD_FILES = frozenset({CARD_JSON, CARD_README})


def folder_digest(folder: Path, skip: frozenset[str] = frozenset()) -> str:
    """SHA-256 over the folder's files (relative path and content, in path order)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in skip or rel.startswith("."):
            continue
        h.update(rel.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def model_digest(folder: Path) -> str:
    return folder_digest(folder, skip=_CARD_FILES)


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder in the output directory (same filesystem: the rename is atomic)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f".partial-{uuid.uuid4().hex}"
        staging.mkdir()
    except OSError as exc:
        raise TrainError(f"cannot write to the output directory {out}: {exc}") from None
    return staging


def check_name(name: str) -> None:
    if not name or "/" in name or "@" in name or name.startswith("."):
        raise TrainError(f"--name {name!r}: must be non-empty, without '/', '@' or a leading '.'")


def publish(staging: Path, out: Path, name: str, card_files: frozenset[str] = _CARD_FILES) -> Path:
    """Renames the finished staging folder to `<name>@<hash8>` of its model files (every file
    but card_files). Refuses, and leaves both folders as they are, when that folder exists
    already."""
    digest = folder_digest(staging, skip=card_files)
    target = out / f"{name}@{digest.removeprefix('sha256:')[:8]}"
    if target.exists():
        raise TrainError(
            f"{target} exists already (the same model files): it is never overwritten, and "
            "nothing new was written"
        )
    try:
        os.rename(staging, target)
    except OSError as exc:
        raise TrainError(f"cannot move the model into {target}: {exc}") from None
    return target


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (folder / CARD_README).write_text(render_readme(card))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render_readme(card: dict[str, Any]) -> str:
    base, data, split, ev, tr = (
        card["base"],
        card["data"],
        card["split"],
        card["eval"],
        card["training"],
    )
    window = data.get("window") or {}
    window_text = (
        f"{window.get('since') or 'the beginning'} to {window.get('until') or 'the export'}"
        if data.get("window")
        else "not known (read from a file)"
    )
    versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    return f"""# {card["id"]}

A reward model (task `reward`): one score per (conversation, answer); a higher score is an
answer the users would rather have. Trained by `parlance-train reward` with TRL's
RewardTrainer (Bradley-Terry loss on pairwise comparisons).

| | |
|---|---|
| base | `{base["source"]}` ({base["digest"]}) |
| data | `{data["source"]}` ({data["digest"]}) |
| data window | {window_text} |
| pairs | {data["pairs"]} from {data["prompts"]} prompts |
| train / held-out pairs | {split["train_pairs"]} / {split["held_out_pairs"]} \
({split["train_prompts"]} / {split["held_out_prompts"]} prompts, seed {split["seed"]}) |
| held-out pairwise accuracy | {_pct(ev["held_out_pairwise_accuracy"])} |
| training | {tr["steps"]} steps, batch {tr["batch_size"]}, {tr["pairs_seen"]} pairs seen \
in {tr["seconds"]:.1f} s ({tr["pairs_per_s"]:.1f} pairs/s) on {tr["device"]} |
| versions | {versions} |
| model digest | {card["model_digest"]} |

Held-out pairwise accuracy: the share of held-out pairs whose preferred answer scores higher
(held-out pairs answer prompts no training pair answers). `model_card.json` holds every figure.
"""
