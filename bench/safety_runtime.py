"""The MiniLM safety classifier's encoder: ONNX Runtime against PyTorch (issue 19's cost).

The classifier (the default head unless --head) loaded twice in one process,
`SAFETY_MINILM_RUNTIME` "torch" and "onnx", one thread each, the unit cache off (a cache would
measure lookups, not the model). First the two score every text of a labelled set and the
report gives the largest score difference and the decisions that differ at 0.5; then they
classify the set's texts one at a time (batch 1: a chat message) and 32 at a time (the
service's largest micro-batch) in turns, so that the noise of a shared machine hits both alike.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/safety_runtime.py [--data bench/data/safety_eval_6]
        [--head minilm_head_7.npz] [--texts 120] [--rounds 3] [--out bench/results/safety_onnx.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.procs import load_average
from lib.report import Report, out_argument, table
from lib.stats import fmt, percentile
from safety_eval import load_set

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("torch", "onnx")


def load(runtime: str, head: str | None, cache: str) -> object:
    from parlance.safety.classifier.minilm import MiniLMClassifier

    classifier = MiniLMClassifier(head_path=head, threads=1, runtime=runtime, onnx_cache=cache)
    asyncio.run(classifier.load())
    assert classifier.encoder is not None and classifier.encoder.runtime == runtime
    classifier.encoder.cache_units = 0
    return classifier


def timed_calls(
    classifiers: dict[str, object], batches: list[list[str]], rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each runtime, the runtimes taking turns on each batch."""
    seconds: dict[str, list[float]] = {r: [] for r in classifiers}
    order = list(classifiers)
    for _ in range(rounds):
        for batch in batches:
            order.reverse()  # neither runtime always goes first
            for runtime in order:
                started = time.perf_counter()
                classifiers[runtime].score(batch)  # type: ignore[attr-defined]
                seconds[runtime].append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "safety_eval_6")
    parser.add_argument("--head", default=None, help="a head file (default: the default head)")
    parser.add_argument("--texts", type=int, default=120, help="texts timed at batch 1")
    parser.add_argument("--rounds", type=int, default=3)
    out_argument(parser, "safety_onnx.md")
    args = parser.parse_args()

    texts = [item.text for item in load_set(args.data)]
    before = load_average()
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        classifiers = {r: load(r, args.head, cache) for r in RUNTIMES}
        load_s = time.perf_counter() - started
    name = classifiers["torch"].name  # type: ignore[attr-defined]

    scores = {r: c.score(texts) for r, c in classifiers.items()}  # type: ignore[attr-defined]
    difference = max(
        abs(a[k] - b[k]) for a, b in zip(scores["torch"], scores["onnx"], strict=True) for k in a
    )
    decisions = sum(
        (max(a.values()) >= 0.5) != (max(b.values()) >= 0.5)
        for a, b in zip(scores["torch"], scores["onnx"], strict=True)
    )

    sample = random.Random(0).sample(texts, min(args.texts, len(texts)))
    ones = timed_calls(classifiers, [[t] for t in sample], args.rounds)
    thirty_twos = [texts[i : i + 32] for i in range(0, len(texts) - 31, 32)]
    batched = timed_calls(classifiers, thirty_twos, max(1, args.rounds - 1))

    rows = []
    for label, seconds, size in (("1", ones, 1), ("32", batched, 32)):
        p50 = {r: percentile(seconds[r], 50) for r in RUNTIMES}
        rate = {r: size * len(seconds[r]) / sum(seconds[r]) for r in RUNTIMES}
        rows.append(
            [
                label,
                len(seconds["torch"]),
                fmt(p50["torch"] * 1000, 2),
                fmt(p50["onnx"] * 1000, 2),
                fmt(p50["onnx"] / p50["torch"], 2),
                fmt(rate["torch"], 0),
                fmt(rate["onnx"], 0),
                fmt(rate["onnx"] / rate["torch"], 2),
            ]
        )
    report = Report(
        "MiniLM safety encoder: ONNX Runtime against PyTorch",
        f"Classifier: {name}, one thread each, unit cache off; both loaded in this process "
        f"({load_s:.1f} s for both, the ONNX export included).",
        f"Set: {args.data.relative_to(ROOT)} ({len(texts)} texts); batch 1 on {len(sample)} of "
        f"them x {args.rounds} rounds, batch 32 on {len(thirty_twos)} batches x "
        f"{max(1, args.rounds - 1)} rounds, the runtimes in turns.",
        f"Machine load (1, 5, 15 min): before {before}, after {load_average()}.",
    )
    report.section(
        "Same scores",
        f"Largest difference of any category's score over the {len(texts)} texts: "
        f"{difference:.2e}; texts flagged by one runtime and not the other (at 0.5): "
        f"{decisions}.",
    )
    report.section(
        "Cost (ms per call, p50; texts/s over all calls)",
        *table(
            [
                "batch",
                "calls",
                "torch ms",
                "onnx ms",
                "onnx / torch",
                "torch texts/s",
                "onnx texts/s",
                "onnx / torch",
            ],
            rows,
        ),
    )
    report.write(args.out)


if __name__ == "__main__":
    main()
