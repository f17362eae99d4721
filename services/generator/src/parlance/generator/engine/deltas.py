"""Fine-tuned encoder deltas: low-rank changes of an embedding model's linear layers (LoRA's
W + scale * B @ A, trained by services/generator/training/intents/finetune.py), merged into
the weights when the model loads, so a fine-tuned encoder costs exactly the frozen one's
forward pass and nothing beyond torch is needed (no PEFT).

A deltas file (npz) names itself and the pooling it was trained with, and carries reference
texts with their vectors as served: the engine embeds them after the merge and refuses to
serve when they moved (deltas merged into another encoder, or damaged ones, would serve wrong
vectors without any other error).
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from parlance.common.low_rank import LowRankDelta

# The reference texts' vectors after the merge must keep at least this cosine with the stored
# ones. Measured with the shipped deltas: float32 with 1 or 2 threads, 1 - 6e-8 apart;
# bfloat16 (dtype auto where the CPU has it) 1 - 2e-5; any one of the 36 deltas three times as
# large, 0.875-0.9991 (all caught); any one left out, 0.962-0.9998 (all but two caught); the
# frozen encoder's vectors 0.61-0.75 (test_embed_deltas.py checks the last two kinds).
CHECK_MIN_COSINE = 0.9995


@dataclass(frozen=True)
class EncoderDeltas:
    """A deltas file's contents."""

    name: str
    pooling: str
    deltas: tuple[LowRankDelta, ...]
    check_texts: tuple[str, ...]
    check_vectors: np.ndarray  # [check texts x dimensions], float32 as served


def resolve_deltas_path(value: str) -> Path:
    """A file name alone that is a deltas file shipped in this package (e.g.
    "minilm_intents_1.npz") is that one, wherever the package is installed; anything else is
    a path."""
    if Path(value).name == value:
        shipped = resources.files(__package__) / value
        if shipped.is_file():
            return Path(str(shipped))
    return Path(value)


def load_deltas(path: Path) -> EncoderDeltas:
    """The deltas file's arrays, checked for consistency. ValueError names what is wrong (a
    file that is no deltas file, a damaged zip member, shapes that do not pair up)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            scale = float(data["lora_scale"])
            deltas = tuple(
                LowRankDelta(
                    str(module),
                    np.asarray(data[f"lora_a_{i}"], dtype=np.float32),
                    np.asarray(data[f"lora_b_{i}"], dtype=np.float32),
                    scale,
                )
                for i, module in enumerate(data["lora_modules"])
            )
            found = EncoderDeltas(
                name=str(data["name"]),
                pooling=str(data["pooling"]),
                deltas=deltas,
                check_texts=tuple(str(t) for t in data["check_texts"]),
                check_vectors=np.asarray(data["check_vectors"], dtype=np.float32),
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: not a deltas file ({type(exc).__name__}: {exc})") from None
    problem = deltas_problem(found)
    if problem:
        raise ValueError(f"{path}: not a usable deltas file: {problem}")
    return found


def deltas_problem(found: EncoderDeltas) -> str:
    """What is inconsistent in a deltas file ("" when nothing is)."""
    if not found.deltas:
        return "no deltas"
    for delta in found.deltas:
        if delta.a.ndim != 2 or delta.b.ndim != 2 or delta.a.shape[0] != delta.b.shape[1]:
            return f"delta of {delta.module}: a {delta.a.shape}, b {delta.b.shape}"
        if not (np.isfinite(delta.a).all() and np.isfinite(delta.b).all()):
            return f"delta of {delta.module} is not finite"
    if not found.check_texts or found.check_vectors.shape[0] != len(found.check_texts):
        return "reference vectors that do not match its reference texts"
    return ""


def check_vectors(found: EncoderDeltas, vectors: np.ndarray) -> None:
    """ValueError when the reference texts' vectors as served now (after the merge) are not
    those stored with the deltas."""
    if vectors.shape != found.check_vectors.shape:
        raise ValueError(
            f"deltas {found.name}: reference vectors of shape {found.check_vectors.shape}, "
            f"the model gives {vectors.shape}"
        )
    worst = float(np.min(np.sum(vectors * found.check_vectors, axis=1)))
    if worst < CHECK_MIN_COSINE:
        raise ValueError(
            f"deltas {found.name}: a reference text's vector has cosine {worst:.4f} with the "
            f"one stored (at least {CHECK_MIN_COSINE}): the deltas do not fit this model, or "
            "the file is damaged"
        )
