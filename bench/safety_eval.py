"""Safety classifiers on the labelled evaluation set: recall, precision, hard negatives, cost.

    .venv/bin/python bench/safety_eval.py [--out bench/results/safety_eval.md]
        [--backends profanity,minilm,minilm+profanity,hatesonar] [--threads 2]
        [--cost-rounds 3]

The set is bench/data/safety_eval/ (README.md there: how it was written, its licence). Each
backend flags a text in a category when its score reaches the backend's default threshold (what
the service does with no SAFETY_*THRESHOLD* set). Per category C, over the texts labelled C and
the texts flagged in C:
- recall: labelled C and flagged in C / labelled C;
- precision: flagged in C and labelled C / flagged in C (a hate text flagged as harassment only
  counts against harassment's precision when it is not also labelled harassment);
- caught: labelled C and flagged in any category / labelled C (what blocking sees).
Only the categories a backend claims get recall and precision; "-" otherwise. Overall recall:
toxic texts flagged in any category. Benign and hard-negative flag rate: texts of each group
flagged in any category.

Cost: texts/s classifying the set's texts through the backend's score() one at a time (batch 1)
and 32 at a time, with torch and BLAS limited to --threads threads, in this process. The machine
may be shared, so each backend's figures are also given relative to profanity's in the same run.

hatesonar, a candidate that is not a service backend, is scored by an adapter here and skipped
with the reason when it is not importable (it is not a project dependency: MODELS.md in
services/safety says how it was assessed, and why tox-block and Detoxify have no row).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "safety_eval"
sys.path.insert(0, str(Path(__file__).resolve().parent))

CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "violence",
    "self-harm",
    "sexual",
)

# A backend: (claimed categories, threshold, score(texts) -> [{category: score}]).
ScoreFn = Callable[[list[str]], list[dict[str, float]]]


@dataclass
class Item:
    group: str  # toxic, benign, hard_negative
    labels: frozenset[str]
    kind: str
    text: str


@dataclass
class Backend:
    name: str
    categories: tuple[str, ...]
    threshold: float
    score: ScoreFn
    note: str = ""
    # Per-category input thresholds where they differ from `threshold` (the head's own,
    # minilm.INPUT_THRESHOLDS, as the service applies them to input).
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    backend: Backend
    flags: list[set[str]] = field(default_factory=list)
    batch1: float = 0.0
    batch32: float = 0.0


def load_set(data: Path = DATA) -> list[Item]:
    items: list[Item] = []
    for line in (data / "toxic.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            labels, text = line.split("\t")
            items.append(Item("toxic", frozenset(labels.split(",")), "", text))
    for line in (data / "benign.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            group, kind, text = line.split("\t")
            items.append(Item(group, frozenset(), kind, text))
    return items


def service_backend(name: str, head: str | None = None) -> Backend:
    from parlance.safety.classifier import build_classifier
    from parlance.safety.config import SafetySettings

    classifier = build_classifier(SafetySettings(classifier=name, minilm_head_path=head))
    asyncio.run(classifier.load())
    encoder = getattr(classifier, "encoder", None)
    if encoder is not None:
        # No embedding cache: the cost passes score the same texts again, and a cache would
        # measure lookups, not the model (the service keeps one: a chat re-sends its history).
        encoder.cache_units = 0
    return Backend(
        classifier.name,
        classifier.evaluated_categories,
        classifier.default_threshold,
        classifier.score,
        thresholds=classifier.default_input_thresholds,
    )


def ensemble(first: Backend, second: Backend) -> Backend:
    """Flags where either does, each at its own threshold: scores are rescaled so that each
    backend's threshold maps to 0.5 (piecewise linear), then the maximum is taken."""

    def rescale(value: float, threshold: float) -> float:
        if value < threshold:
            return 0.5 * value / threshold
        return 0.5 + 0.5 * (value - threshold) / max(1e-9, 1 - threshold)

    def score(texts: list[str]) -> list[dict[str, float]]:
        merged = []
        for a, b in zip(first.score(texts), second.score(texts), strict=True):
            row: dict[str, float] = {}
            for backend, scores in ((first, a), (second, b)):
                for category, value in scores.items():
                    row[category] = max(row.get(category, 0.0), rescale(value, backend.threshold))
            merged.append(row)
        return merged

    categories = tuple(c for c in CATEGORIES if c in {*first.categories, *second.categories})
    return Backend(f"{first.name} + {second.name}", categories, 0.5, score)


def hatesonar_backend() -> Backend:
    """hatesonar 0.1.0: TF-IDF + logistic regression (ONNX) on Davidson et al.'s tweets; three
    classes. hate_speech -> hate, offensive_language -> harassment; the package's own decision
    is the top class, i.e. a class flags when it is the most probable of the three."""
    from hatesonar import Sonar

    # Its ONNX string normaliser asks for the en_US.UTF-8 locale; where that is not installed,
    # HATESONAR_MODEL names a copy whose normaliser says C.UTF-8 (MODELS.md: how it was made).
    override = os.environ.get("HATESONAR_MODEL")
    sonar = Sonar(Path(override)) if override else Sonar()

    def score(texts: list[str]) -> list[dict[str, float]]:
        rows = []
        for text in texts:
            classes = {c["class_name"]: float(c["confidence"]) for c in sonar.ping(text)["classes"]}
            top = max(classes, key=classes.__getitem__)
            # 1.0 for the top class, its probability / 2 otherwise: flags exactly at top class.
            rows.append(
                {
                    "hate": 1.0 if top == "hate_speech" else classes["hate_speech"] / 2,
                    "harassment": 1.0
                    if top == "offensive_language"
                    else classes["offensive_language"] / 2,
                }
            )
        return rows

    return Backend("hatesonar-0.1.0", ("harassment", "hate"), 0.5, score)


FACTORIES: dict[str, Callable[[dict[str, Backend]], Backend]] = {
    "profanity": lambda built: service_backend("profanity"),
    "minilm": lambda built: service_backend("minilm"),
    "minilm+profanity": lambda built: ensemble(built["minilm"], built["profanity"]),
    "hatesonar": lambda built: hatesonar_backend(),
}


def add_candidate_heads(specs: list[str]) -> list[str]:
    """--head KEY=PATH: the minilm backend with another head file (a candidate that is not
    shipped, e.g. `train_head.py --head linear --out PATH`, or an earlier head from git)."""
    keys = []
    for spec in specs:
        key, _, path = spec.partition("=")
        FACTORIES[key] = partial(candidate_backend, path=path, key=key)
        keys.append(key)
    return keys


def candidate_backend(built: dict[str, Backend], path: str, key: str) -> Backend:
    backend = service_backend("minilm", path)
    # Candidates may share a head name (rounds of one head): the key tells them apart.
    backend.name = f"{key}: {backend.name}"
    return backend


def classify(backend: Backend, items: list[Item]) -> list[set[str]]:
    flags = []
    texts = [item.text for item in items]
    for start in range(0, len(texts), 32):
        for scores in backend.score(texts[start : start + 32]):
            flags.append(
                {c for c, v in scores.items() if v >= backend.thresholds.get(c, backend.threshold)}
            )
    return flags


def throughput(backend: Backend, texts: list[str], batch: int, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for start in range(0, len(texts), batch):
            backend.score(texts[start : start + batch])
        best = max(best, len(texts) / (time.perf_counter() - started))
    return best


def ratio(part: int, whole: int) -> str:
    return f"{part / whole:.2f} ({part}/{whole})" if whole else "-"


def category_rows(results: list[Result], items: list[Item]) -> list[str]:
    lines = [
        "| backend | category | texts | recall | precision | caught (any category) |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for category in CATEGORIES:
            labelled = [i for i, item in enumerate(items) if category in item.labels]
            caught = sum(1 for i in labelled if result.flags[i])
            if category not in result.backend.categories:
                lines.append(
                    f"| {result.backend.name} | {category} | {len(labelled)} | - | - | "
                    f"{ratio(caught, len(labelled))} |"
                )
                continue
            hits = sum(1 for i in labelled if category in result.flags[i])
            flagged = [i for i, f in enumerate(result.flags) if category in f]
            correct = sum(1 for i in flagged if category in items[i].labels)
            lines.append(
                f"| {result.backend.name} | {category} | {len(labelled)} | "
                f"{ratio(hits, len(labelled))} | {ratio(correct, len(flagged))} | "
                f"{ratio(caught, len(labelled))} |"
            )
    return lines


def summary_rows(results: list[Result], items: list[Item]) -> list[str]:
    groups = {
        g: [i for i, item in enumerate(items) if item.group == g]
        for g in ("toxic", "benign", "hard_negative")
    }
    base = next((r for r in results if r.backend.name.startswith("profanity")), None)
    lines = [
        "| backend | claims | toxic recall (any category) | benign flagged | hard negatives "
        "flagged | texts/s batch 1 | texts/s batch 32 | batch 1 vs profanity | batch 32 vs "
        "profanity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        counts = {g: sum(1 for i in idx if result.flags[i]) for g, idx in groups.items()}
        relative = ("-", "-")
        if base is not None and base.batch1 and result.batch1:
            relative = (
                f"{result.batch1 / base.batch1:.3f}",
                f"{result.batch32 / base.batch32:.3f}",
            )
        lines.append(
            f"| {result.backend.name} | {', '.join(result.backend.categories)} | "
            f"{ratio(counts['toxic'], len(groups['toxic']))} | "
            f"{ratio(counts['benign'], len(groups['benign']))} | "
            f"{ratio(counts['hard_negative'], len(groups['hard_negative']))} | "
            f"{result.batch1:.0f} | {result.batch32:.0f} | {relative[0]} | {relative[1]} |"
        )
    return lines


def kind_rows(results: list[Result], items: list[Item]) -> list[str]:
    """Benign and hard-negative texts flagged, per kind (help requests, system prompts, ...)."""
    kinds = sorted({item.kind for item in items if item.group != "toxic"})
    lines = [
        "| backend | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for result in results:
        cells = []
        for kind in kinds:
            rows = [
                i for i, item in enumerate(items) if item.group != "toxic" and item.kind == kind
            ]
            cells.append(f"{sum(1 for i in rows if result.flags[i])}/{len(rows)}")
        lines.append(f"| {result.backend.name} | " + " | ".join(cells) + " |")
    return lines


def missed_rows(result: Result, items: list[Item], limit: int = 40) -> list[str]:
    lines = []
    for i, item in enumerate(items):
        wrong_miss = item.group == "toxic" and not result.flags[i]
        wrong_flag = item.group != "toxic" and result.flags[i]
        if wrong_miss or wrong_flag:
            what = (
                "missed " + ",".join(sorted(item.labels))
                if wrong_miss
                else (f"flagged {','.join(sorted(result.flags[i]))} ({item.group} {item.kind})")
            )
            lines.append(f"- {what}: {item.text}")
    return lines[:limit] + ([f"- ... {len(lines) - limit} more"] if len(lines) > limit else [])


def limit_threads(threads: int) -> None:
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "safety_eval.md")
    parser.add_argument("--backends", default=",".join(FACTORIES))
    parser.add_argument("--data", type=Path, default=DATA, help="the set's folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost-rounds", type=int, default=3)
    parser.add_argument("--head", action="append", default=[], metavar="KEY=PATH")
    parser.add_argument(
        "--cost-texts", type=int, default=0, help="cost over the set's first N texts (0: all)"
    )
    args = parser.parse_args()
    candidates = add_candidate_heads(args.head)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    limit_threads(args.threads)

    items = load_set(args.data)
    texts = [item.text for item in items]
    built: dict[str, Backend] = {}
    results: list[Result] = []
    skipped: list[str] = []
    for key in [*args.backends.split(","), *candidates]:
        try:
            backend = FACTORIES[key](built)
        except ImportError as exc:
            skipped.append(f"- {key}: not importable here ({exc})")
            continue
        built[key] = backend
        result = Result(backend, classify(backend, items))
        sample = texts[: args.cost_texts or None]
        result.batch1 = throughput(backend, sample, 1, args.cost_rounds)
        result.batch32 = throughput(backend, sample, 32, args.cost_rounds)
        results.append(result)
        print(f"{backend.name}: done", file=sys.stderr)

    counts = {
        g: sum(1 for item in items if item.group == g) for g in ("toxic", "benign", "hard_negative")
    }
    report = [
        "# Safety classifiers on the labelled evaluation set",
        "",
        "```",
        "HF_HUB_OFFLINE=1 "
        + shlex.join([".venv/bin/python", "bench/safety_eval.py", *sys.argv[1:]]),
        "```",
        "",
        f"Set: {args.data.resolve().relative_to(ROOT)}/ "
        f"({len(items)} texts: {counts['toxic']} toxic, "
        f"{counts['benign']} benign, {counts['hard_negative']} hard negatives). "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), "
        f"{args.threads} threads per model; cost: best of {args.cost_rounds} passes over the "
        f"set's {'first ' + str(args.cost_texts) + ' ' if args.cost_texts else ''}texts; "
        f"load average at the end: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}.",
        "",
        "## Summary",
        "",
        *summary_rows(results, items),
        "",
        "## Per category",
        "",
        *category_rows(results, items),
        "",
        "## Benign texts flagged, per kind",
        "",
        *kind_rows(results, items),
        "",
    ]
    for result in results:
        report += [f"## Errors of {result.backend.name}", "", *missed_rows(result, items), ""]
    if skipped:
        report += ["## Not run", "", *skipped, ""]
    args.out.write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
