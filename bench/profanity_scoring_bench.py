"""profanity-check scored through sklearn vs. directly (classifier/profanity.py), same process.

    .venv/bin/python bench/profanity_scoring_bench.py [--rounds 5] [--calls 300] [--out FILE]

Three paths on the same texts, interleaved round by round so machine noise hits each alike:
the library's predict_prob (vectorizer + CalibratedClassifierCV.predict_proba); `sparse`, the
vectorizer's transform() + one sparse product with the five folds' weights (the service's
scorer until TfidfRows); and `direct`, the scorer the safety service uses now (TfidfRows'
features: the vectorizer's analyzer, vocabulary and idf without sklearn's transform). Calls of
one text (what the gateway sends for an output window) and of 32 texts (a micro-batch).
Reports ms per call (median of the rounds) and the speed-up over the library.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from lib.report import Report, out_argument, table
from lib.stats import percentile
from profanity_check import profanity_check

from parlance.safety.classifier.profanity import CalibratedLinearScorer, fast_predict_prob


def texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = (
        "the answer is that your printer needs a new driver and some patience please try "
        "restarting it you stupid machine hello thanks weather recipe flour eggs milk"
    ).split()
    return [" ".join(rng.choices(words, k=rng.randint(8, 40))) for _ in range(count)]


def ms_per_call(score: Callable[[Sequence[str]], Any], batches: list[list[str]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        score(batch)
    return (time.perf_counter() - started) / len(batches) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    out_argument(parser, "profanity_scoring.md")
    args = parser.parse_args()
    direct = fast_predict_prob(profanity_check)
    assert direct is not None, "the shipped model did not take the direct path"
    library = profanity_check.predict_prob
    scorer = CalibratedLinearScorer(profanity_check.model)

    def sparse(batch: Sequence[str]) -> Any:
        return scorer(profanity_check.vectorizer.transform(batch))

    paths = {"library": library, "sparse": sparse, "direct": direct}
    rows = []
    for size in (1, 32):
        calls = args.calls if size == 1 else args.calls // 8
        batches = [texts(size, seed) for seed in range(calls)]
        ms: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, path in paths.items():
                ms[name].append(ms_per_call(path, batches))
        lib, mid, fast = (percentile(ms[name], 50) for name in paths)
        rows.append(
            [
                f"{size} text(s)",
                f"{lib:.3f}",
                f"{mid:.3f} ({lib / mid:.1f}x)",
                f"{fast:.3f} ({lib / fast:.1f}x)",
            ]
        )
    report = Report(
        "profanity-check scoring: library vs. direct (bench/profanity_scoring_bench.py)",
        f"ms per call, median (p50) of {args.rounds} rounds of the same calls.",
    )
    report.add(
        "", *table(["call", "library (ms)", "sparse (ms, speed-up)", "direct (ms, speed-up)"], rows)
    )
    report.write(args.out)


if __name__ == "__main__":
    main()
