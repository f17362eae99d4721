"""The re-ask signal's threshold (issue 18, intents/reask.py): the cosine similarity of a user
message to the previous user message of its conversation, with all-MiniLM-L6-v2 in process
(the generator's engine class, as bench/intent_eval.py), on a small hand-written labelled set of
pairs: 'reask' (the same question asked again in other words, after an answer that did not
satisfy) and 'other' (follow-ups on the same topic, a new question, small talk).

    .venv/bin/python bench/intent_reask.py [--out bench/results/intent_reask.md]
        [--deltas minilm_intents_1.npz] [--pooling mean|layers] [--dtype float32|bfloat16]

By default the model the shipped route file measures re-asks with (reask_embed_model):
all-MiniLM-L6-v2 as /v1/embeddings serves it. The fine-tuned intent model
(--deltas minilm_intents_1.npz --pooling layers) puts every message of one task close,
follow-ups too: bench/results/intent_reask_ft.md.

Reports each pair's similarity, precision / recall / accuracy per threshold, the best one, and
a 2-fold check (threshold chosen on one half, measured on the other). A re-ask is a weak
negative on an answer, so the shipped threshold favours precision: a follow-up counted as a
re-ask would blame a good answer.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "intents" / "reask_pairs.tsv"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.procs import load_average  # noqa: E402
from lib.report import Report, out_argument, table  # noqa: E402

from parlance.gateway.intents import load_routes  # noqa: E402

ROUTES = ROOT / "services/gateway/src/parlance/gateway/intents/default_routes.yaml"
EMBED = "all-MiniLM-L6-v2"
THRESHOLDS = [round(0.5 + 0.025 * i, 3) for i in range(0, 19)]


def read_pairs(path: Path) -> list[tuple[bool, str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r["label"] == "reask", r["previous"], r["message"]) for r in rows]


def counts(similarity: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, ...]:
    called = similarity >= threshold
    true_positive = float(np.sum(called & labels))
    precision = true_positive / max(1.0, float(called.sum()))
    recall = true_positive / max(1.0, float(labels.sum()))
    return precision, recall, float(np.mean(called == labels))


def best(similarity: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the highest accuracy (the highest of equals: precision first)."""
    scores = [counts(similarity, labels, t)[2] for t in THRESHOLDS]
    top = max(scores)
    return max(t for t, s in zip(THRESHOLDS, scores, strict=True) if s == top)


async def embed(
    texts: list[str], threads: int, dtype: str, pooling: str, deltas: str | None
) -> np.ndarray:
    from parlance.generator.engine.base import EmbeddingRequest
    from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine

    engine = TransformersEmbeddingEngine(
        served_model_name=EMBED, n_threads=threads, dtype=dtype, pooling=pooling, deltas=deltas
    )
    await engine.start()
    try:
        request = EmbeddingRequest(request_id=uuid.uuid4().hex, inputs=tuple(texts), truncate=True)
        return np.asarray((await engine.embed(request)).vectors, dtype=np.float32)
    finally:
        await engine.close()


def run(args: argparse.Namespace) -> Report:
    pairs = read_pairs(args.data)
    labels = np.array([p[0] for p in pairs])
    texts = [t for p in pairs for t in p[1:]]
    vectors = asyncio.run(embed(texts, args.threads, args.dtype, args.pooling, args.deltas))
    similarity = np.sum(vectors[0::2] * vectors[1::2], axis=1)
    shipped = load_routes(ROUTES).spec.reask_threshold
    report = Report(
        "Re-ask signal: the similarity threshold",
        f"Set: `{args.data.relative_to(ROOT)}`: {len(pairs)} pairs, {int(labels.sum())} re-asks "
        f"and {int((~labels).sum())} others, written by hand for this (how: bench/data/intents/"
        "README.md).",
        f"Model: {EMBED} in process ({args.dtype}, pooling {args.pooling!r}"
        + (f", fine-tuned: deltas {args.deltas} merged" if args.deltas else ", frozen")
        + "); cosine similarity of the two messages' vectors.",
        f"Shipped threshold (route file's reask_threshold): {shipped}.",
        f"Machine load at the start (1, 5, 15 min): {load_average()}.",
    )
    rows = []
    for threshold in THRESHOLDS:
        precision, recall, accuracy = counts(similarity, labels, threshold)
        rows.append([f"{threshold:.3f}", f"{precision:.3f}", f"{recall:.3f}", f"{accuracy:.3f}"])
    halves = [np.arange(len(pairs))[0::2], np.arange(len(pairs))[1::2]]
    right = 0
    for train, test in (halves, halves[::-1]):
        cut = best(similarity[train], labels[train])
        right += int(np.sum((similarity[test] >= cut) == labels[test]))
    chosen = best(similarity, labels)
    chosen_accuracy = counts(similarity, labels, chosen)[2]
    report.section(
        "Thresholds",
        f"Best on the whole set: {chosen:.3f} (accuracy {chosen_accuracy:.3f}); "
        f"2-fold accuracy (threshold chosen on the other half): {right / len(pairs):.3f}.",
        "",
        *table(["threshold", "precision", "recall", "accuracy"], rows),
    )
    report.section(
        "Pairs",
        *table(
            ["label", "similarity", "previous", "message"],
            [
                ["reask" if p[0] else "other", f"{s:.3f}", p[1], p[2]]
                for p, s in sorted(zip(pairs, similarity, strict=True), key=lambda x: -x[1])
            ],
        ),
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out_argument(parser, "intent_reask.md")
    parser.add_argument("--data", type=Path, default=DATA)
    # 1: as the generator serves it (GENERATOR_EMBED_N_THREADS); faster on a busy machine.
    parser.add_argument("--threads", type=int, default=1)
    # The shipped route file's reask_embed_model: all-MiniLM-L6-v2 as /v1/embeddings serves it
    # (float32, the last layer's mean, no deltas). The gateway's intent model under make up:
    # --deltas minilm_intents_2.npz --pooling layers --dtype float32.
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--pooling", choices=["mean", "layers"], default="mean")
    # A fine-tuned encoder's deltas (a file shipped with the generator by name, or a path).
    parser.add_argument("--deltas", default="none")
    args = parser.parse_args()
    if args.deltas.lower() == "none":
        args.deltas = None
    args.data = args.data.resolve()
    run(args).write(args.out)


if __name__ == "__main__":
    main()
