"""How often each embedded safety classifier flags ordinary chat requests.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/safety_everyday.py [--out FILE]

bench/data/safety_eval/everyday_prompts.txt holds 49 prompts a chat product sees every day
(written for this project; none is in the classifiers' training texts or in the labelled set
of bench/safety_eval.py, and they are not used to train or calibrate). A classifier that
refuses them refuses real users: the default must flag at most one (README, "Safety").
--head KEY=PATH adds the minilm backend with another head file (a candidate, or an earlier head
taken from git). --prompts FILE scores another list (one prompt a line), e.g.
bench/data/safety_countries/questions.txt: short questions naming a country or a people.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from lib.report import Report, out_argument, table

from parlance.safety.classifier import CLASSIFIERS
from parlance.safety.config import SafetySettings

PROMPTS = Path(__file__).parent / "data" / "safety_eval" / "everyday_prompts.txt"


def flagged(
    backend: str, prompts: list[str], head: str | None = None
) -> list[tuple[str, str, float]]:
    """(prompt, category, score) of every prompt the backend flags at its default threshold."""
    classifier = CLASSIFIERS[backend](SafetySettings(classifier=backend, minilm_head_path=head))
    asyncio.run(classifier.load())
    threshold = classifier.default_threshold
    out = []
    for prompt, scores in zip(prompts, classifier.score(prompts), strict=True):
        category, score = max(dict(scores).items(), key=lambda kv: kv[1])
        if score >= threshold:
            out.append((prompt, category, float(score)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="profanity,minilm")
    parser.add_argument("--head", action="append", default=[], metavar="KEY=PATH")
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="one prompt a line")
    out_argument(parser, "safety_everyday.md")
    args = parser.parse_args()
    source: Path = args.prompts.resolve()
    prompts = [line for line in source.read_text().splitlines() if line.strip()]
    report = Report(
        "Everyday chat prompts flagged by the embedded safety classifiers",
        f"Prompts: {len(prompts)} ({source.relative_to(Path(__file__).resolve().parents[1])}).",
        "Each backend at its default threshold (no SAFETY_*THRESHOLD* set).",
    )
    rows = []
    runs = [(b, b, None) for b in args.backends.split(",")]
    runs += [(key, "minilm", path) for key, _, path in (h.partition("=") for h in args.head)]
    for label, backend, head in runs:
        hits = flagged(backend, prompts, head)
        rows.append([label, f"{len(hits)} of {len(prompts)}", f"{len(hits) / len(prompts):.2f}"])
        if hits:
            report.section(
                f"Flagged by {label}",
                *table(["prompt", "category", "score"], [[p, c, f"{s:.2f}"] for p, c, s in hits]),
            )
    report.section("Summary", *table(["backend", "flagged", "rate"], rows))
    report.write(args.out)


if __name__ == "__main__":
    main()
