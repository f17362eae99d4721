"""Input moderation's policy on labelled sets: which messages are refused, which answered with
care, and what the classifier catches, for a MiniLM head at given input thresholds; and, with
--choose, the input thresholds a fixed rule picks on development sets (issue 19).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/safety_input_policy.py \
        --head head8=minilm_head_8.npz \
        --messages bench/data/safety_chat_7/messages.tsv \
        --messages bench/data/safety_chat_9/messages.tsv \
        --eval bench/data/safety_eval_9 [--choose] [--thresholds violence=0.9] [--out FILE]

Each text is scored once per head by the classifier the safety service runs (score(): the
maximum over its sentences and windows, as a one-message request's input is scored). The
service's Policy (parlance.safety.policy) turns scores into flags at the input thresholds, and
the gateway's own judge_input (moderation.py) decides refused or answered with care, with the
gateway's default care categories (GatewaySettings.input_care_categories: none, care is off by
default) unless --care says otherwise (--care self-harm,self-harm/intent: care on). So a row
here is what a one-message chat request gets through the real code.

Figures per head: chat messages refused and answered with care (--messages: `kind<TAB>text`,
every message ordinary); toxic recall overall (flagged at all) and per category (the labelled
category flagged), and what becomes of toxic texts (refused / care); hard negatives and
everyday texts flagged and refused (--eval: safety_eval-style folders).

--choose: the rule (fixed before it ran; bench/results/safety_fresh_10.md): starting from 0.5
for every category, raise one category's input threshold at a time through GRID,
each time the raise that removes the most refused chat messages, as long as on every --eval
set each claimed category's recall stays >= MIN_CATEGORY_RECALL and the overall toxic recall
>= MIN_OVERALL_RECALL; stop when no allowed raise removes a refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for src in sorted((ROOT / "services").glob("*/src")):
    sys.path.insert(0, str(src))
sys.path.insert(0, str(ROOT / "bench"))

from safety_eval import Item, load_set  # noqa: E402

from parlance.gateway import errors  # noqa: E402
from parlance.gateway.config import GatewaySettings  # noqa: E402
from parlance.gateway.moderation import judge_input  # noqa: E402
from parlance.safety.policy import Direction, Policy  # noqa: E402
from parlance.safety.v1 import safety_pb2  # noqa: E402

GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
MIN_CATEGORY_RECALL = 0.80
MIN_OVERALL_RECALL = 0.88


@dataclass
class Scored:
    """One labelled text and its scores."""

    source: str  # the set's name
    group: str  # chat, toxic, benign, hard_negative
    kind: str
    labels: frozenset[str]
    text: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    flagged: list[str]
    action: str  # pass, care, refuse


def read_messages(path: Path) -> list[Scored]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    name = path.parent.name
    return [Scored(name, "chat", r["kind"], frozenset(), r["text"]) for r in rows]


def read_eval(folder: Path) -> list[Scored]:
    items: list[Item] = load_set(folder)
    return [Scored(folder.name, i.group, i.kind, i.labels, i.text) for i in items]


def score_all(head: str, texts: list[Scored]) -> tuple[str, tuple[str, ...], dict[str, float]]:
    """Scores `texts` in place; the head's name, categories and input thresholds."""
    from parlance.safety.classifier import build_classifier
    from parlance.safety.config import SafetySettings

    classifier = build_classifier(SafetySettings(classifier="minilm", minilm_head_path=head))
    asyncio.run(classifier.load())
    plain = [t.text for t in texts]
    for start in range(0, len(plain), 32):
        for item, scores in zip(
            texts[start : start + 32], classifier.score(plain[start : start + 32]), strict=True
        ):
            item.scores = dict(scores)
    return classifier.name, classifier.evaluated_categories, classifier.default_input_thresholds


def judge(item: Scored, policy: Policy, care: tuple[str, ...], model: str = "minilm") -> Outcome:
    """The real service policy, then the real gateway decision, for one one-message request."""
    verdict = policy.apply(item.scores, Direction.INPUT)
    result = safety_pb2.Classification(
        flagged=verdict.flagged,
        categories=[
            safety_pb2.CategoryResult(category=c.category, score=c.score, flagged=c.flagged)
            for c in verdict.categories
        ],
    )
    flagged = [c.category for c in verdict.categories if c.flagged]
    response = safety_pb2.ClassifyResponse(results=[result], model=model)
    try:
        judged = judge_input([item.text], response, None, care)
    except errors.APIError:
        return Outcome(flagged, "refuse")
    return Outcome(flagged, "care" if judged.care else "pass")


@dataclass
class Figures:
    chat: int = 0
    refused: list[Scored] = field(default_factory=list)
    cared: list[Scored] = field(default_factory=list)
    # Per --eval set: toxic, caught, per category (labelled, hit), refused/care of toxic,
    # hard negatives / everyday flagged and refused.
    sets: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)


def figures(items: list[Scored], policy: Policy, care: tuple[str, ...]) -> Figures:
    out = Figures()
    for item in items:
        outcome = judge(item, policy, care)
        if item.group == "chat":
            out.chat += 1
            if outcome.action == "refuse":
                out.refused.append(item)
            elif outcome.action == "care":
                out.cared.append(item)
            continue
        counts = out.sets.setdefault(item.source, {"n": Counter(), "hit": Counter()})
        counts["n"][item.group] += 1
        if outcome.flagged:
            counts["hit"][item.group] += 1
        counts["hit"][f"{item.group}:{outcome.action}"] += 1
        for category in item.labels:
            counts["n"][f"cat:{category}"] += 1
            if category in outcome.flagged:
                counts["hit"][f"cat:{category}"] += 1
    return out


def allowed(result: Figures, categories: tuple[str, ...]) -> bool:
    for counts in result.sets.values():
        n, hit = counts["n"], counts["hit"]
        if n["toxic"] and hit["toxic"] / n["toxic"] < MIN_OVERALL_RECALL:
            return False
        for category in categories:
            labelled = n[f"cat:{category}"]
            if labelled and hit[f"cat:{category}"] / labelled < MIN_CATEGORY_RECALL:
                return False
    return True


def choose(
    items: list[Scored],
    categories: tuple[str, ...],
    start: dict[str, float],
    care: tuple[str, ...],
) -> tuple[dict[str, float], list[str]]:
    """The rule of the module docstring; returns the thresholds and the steps taken."""
    chosen = dict(start)
    steps: list[str] = []
    current = figures(items, Policy(categories, 0.5, {Direction.INPUT: chosen}), care)
    if not allowed(current, categories):
        steps.append("the starting thresholds already break a recall floor: nothing raised")
        return chosen, steps
    while True:
        best: tuple[int, str, float, Figures] | None = None
        for category in categories:
            higher = [g for g in GRID if g > chosen[category]]
            if not higher:
                continue
            trial = {**chosen, category: higher[0]}
            result = figures(items, Policy(categories, 0.5, {Direction.INPUT: trial}), care)
            gain = len(current.refused) - len(result.refused)
            if gain > 0 and allowed(result, categories) and (best is None or gain > best[0]):
                best = (gain, category, higher[0], result)
        if best is None:
            return chosen, steps
        gain, category, value, current = best
        chosen[category] = value
        steps.append(f"{category} -> {value}: {gain} fewer refused ({len(current.refused)} left)")


def rate(part: int, whole: int) -> str:
    return f"{part} of {whole} ({100 * part / whole:.1f}%)" if whole else "-"


def report(
    label: str, thresholds: dict[str, float], result: Figures, categories: tuple[str, ...]
) -> list[str]:
    shown = ", ".join(f"{c} {thresholds[c]}" for c in categories)
    lines = [
        f"### {label}",
        "",
        f"Input thresholds: {shown}.",
        "",
        f"- chat messages refused: {rate(len(result.refused), result.chat)}; answered with "
        f"care: {rate(len(result.cared), result.chat)}",
    ]
    for name, counts in result.sets.items():
        n, hit = counts["n"], counts["hit"]
        per_category = ", ".join(
            f"{c} {hit[f'cat:{c}'] / n[f'cat:{c}']:.2f}" for c in categories if n[f"cat:{c}"]
        )
        lines += [
            f"- {name}: toxic recall {hit['toxic'] / max(1, n['toxic']):.2f} "
            f"({hit['toxic']}/{n['toxic']}; refused {hit['toxic:refuse']}, care "
            f"{hit['toxic:care']}); per category: {per_category}",
            f"- {name}: hard negatives flagged {rate(hit['hard_negative'], n['hard_negative'])}"
            f" (refused {hit['hard_negative:refuse']}); everyday flagged "
            f"{rate(hit['benign'], n['benign'])}",
        ]
    lines += ["", "Refused chat messages:", "", "| set | kind | message | top score |"]
    lines.append("|---|---|---|---|")
    for item in result.refused:
        category, score = max(item.scores.items(), key=lambda kv: kv[1])
        text = item.text.replace("|", "\\|")
        lines.append(f"| {item.source} | {item.kind} | {text} | {category} {score:.3f} |")
    lines.append("")
    return lines


def parse_thresholds(spec: str) -> dict[str, float]:
    pairs = [p.split("=") for p in spec.split(",") if p.strip()]
    return {k.strip(): float(v) for k, v in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", action="append", required=True, help="KEY=PATH")
    parser.add_argument("--messages", action="append", type=Path, default=[])
    parser.add_argument("--eval", action="append", type=Path, default=[])
    parser.add_argument("--care", default=None, help="comma-separated; default: the gateway's")
    parser.add_argument("--thresholds", default="", help="input thresholds to report too")
    parser.add_argument("--choose", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    care = tuple(
        GatewaySettings().input_care_categories
        if args.care is None
        else [c for c in args.care.split(",") if c]
    )
    lines = [
        "Command: `" + " ".join(["bench/safety_input_policy.py", *sys.argv[1:]]) + "`",
        "",
        f"Care categories: {', '.join(care) or 'none'}.",
        "",
    ]
    for spec in args.head:
        key, _, path = spec.partition("=")
        items = [s for p in args.messages for s in read_messages(p)]
        items += [s for d in args.eval for s in read_eval(d)]
        model, categories, in_force = score_all(path, items)
        lines += [f"## {key}: {model}", ""]
        start = {c: 0.5 for c in categories}
        result = figures(items, Policy(categories, 0.5, {Direction.INPUT: start}), care)
        lines += report("at 0.5 (the default)", start, result, categories)
        if in_force:
            shipped = {**start, **in_force}
            result = figures(items, Policy(categories, 0.5, {Direction.INPUT: shipped}), care)
            lines += report("the head's own input thresholds", shipped, result, categories)
        if args.thresholds:
            given = {**start, **parse_thresholds(args.thresholds)}
            result = figures(items, Policy(categories, 0.5, {Direction.INPUT: given}), care)
            lines += report("given thresholds", given, result, categories)
        if args.choose:
            chosen, steps = choose(items, categories, start, care)
            result = figures(items, Policy(categories, 0.5, {Direction.INPUT: chosen}), care)
            lines += ["Rule's steps:", "", *[f"- {s}" for s in steps or ["none"]], ""]
            lines += report("chosen by the rule", chosen, result, categories)
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
