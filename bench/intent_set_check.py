"""Checks on an intent evaluation set (bench/data/intents_N/messages.tsv) that need no model
and show no other set; each set's own check.py runs it on its folder:

    .venv/bin/python bench/data/intents_4/check.py
    .venv/bin/python bench/intent_set_check.py bench/data/intents_4

Prints the counts per label (the README's table), this set's duplicates, and this set's
messages (texts and contexts) that equal, ignoring case, or are close to (difflib ratio above
0.8) a message or context of the earlier sets (bench/data/intents*/messages.tsv) or an example
of the route file. Only this set's lines are printed, never the earlier sets' or the examples,
so that running it keeps the set's author independent of them. Exits 1 when anything collides.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ROUTES = ROOT / "services/gateway/src/parlance/gateway/intents/default_routes.yaml"
LABELS = [
    "coding",
    "math",
    "writing",
    "translation",
    "small_talk",
    "support",
    "health",
    "default",
    "mixed",
]
NEAR = 0.8


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def close(text: str, pool: set[str]) -> bool:
    matcher = difflib.SequenceMatcher(None, text, autojunk=False)
    for other in pool:
        matcher.set_seq2(other)
        if matcher.real_quick_ratio() > NEAR and matcher.quick_ratio() > NEAR:
            if matcher.ratio() > NEAR:
                return True
    return False


def main(here: Path) -> int:
    """Checks the set in folder `here`; 1 when anything collides."""
    here = here.resolve()
    rows = read(here / "messages.tsv")
    counts = Counter(r["intent"] for r in rows)
    follow = Counter(r["intent"] for r in rows if r["context"])
    print("| intent | messages | of which follow-ups (with `context`) |\n|---|---|---|")
    for label in LABELS:
        print(f"| {label} | {counts[label]} | {follow[label]} |")
    print(f"| **total** | **{len(rows)}** | **{sum(follow.values())}** |")

    spec = yaml.safe_load(ROUTES.read_text(encoding="utf-8"))
    allowed = {r["name"] for r in spec["routes"]} | {"default", "mixed"}
    unknown = [r for r in rows if r["intent"] not in allowed]
    problems = [f"unknown label {r['intent']!r}: {r['text']}" for r in unknown]
    problems += [f"empty text (row {i + 2})" for i, r in enumerate(rows) if not r["text"]]

    texts = [r["text"].casefold() for r in rows]
    problems += [f"duplicate: {t}" for t, n in Counter(texts).items() if n > 1]
    problems += [
        f"near-duplicate pair in this set: {a} / {b}"
        for a, b in itertools.combinations(texts, 2)
        if difflib.SequenceMatcher(None, a, b).ratio() > NEAR
    ]

    earlier: set[str] = set()
    for path in sorted((ROOT / "bench/data").glob("intents*/messages.tsv")):
        if path.parent != here:
            for r in read(path):
                earlier |= {r["text"].casefold(), (r["context"] or "").casefold()}
    earlier.discard("")
    examples = {
        e.casefold() for route in [spec["default"], *spec["routes"]] for e in route["examples"]
    }
    pool = earlier | examples
    print(f"\ncompared with {len(earlier)} earlier-set texts/contexts, {len(examples)} examples")
    for field in ("text", "context"):
        mine = [r[field] for r in rows if r[field]]
        exact = [m for m in mine if m.casefold() in pool]
        near = [m for m in mine if m.casefold() not in pool and close(m.casefold(), pool)]
        print(f"{field}: {len(exact)} equal, {len(near)} close (ratio > {NEAR})")
        problems += [f"{field} equals an earlier message or example: {m}" for m in exact]
        problems += [f"{field} close to an earlier message or example: {m}" for m in near]

    for problem in problems:
        print(problem)
    print(f"problems: {len(problems)}")
    return 1 if problems else 0


def loads_with_intent_eval(here: Path) -> int:
    """1 when bench/intent_eval.py's own loader reads the set wrongly (an unknown label, an
    empty text, a tab or newline in a field, a mixed message with a context), so that a format
    slip shows before the set's first scoring. Where intent_eval cannot be imported (a partial
    environment without the gateway package's dependencies), the same csv call as its
    `read_items` reads the set, and this says so."""
    # Imported here: intent_eval imports the gateway package, which main() needs not.
    try:
        from intent_eval import read_items

        items = [(i.intent, i.context, i.text) for i in read_items(here / "messages.tsv")]
    except ImportError as error:
        print(f"intent_eval not importable here ({error}); reading with read_items' csv call")
        with (here / "messages.tsv").open(encoding="utf-8", newline="") as handle:
            rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            items = [(r["intent"], r["context"] or "", r["text"]) for r in rows]
    by_label = Counter(intent for intent, _, _ in items)
    with_context = sum(bool(context) for _, context, _ in items)
    print(f"read_items: {len(items)} items, {with_context} with context, {dict(by_label)}")
    odd = [
        text
        for intent, context, text in items
        if intent not in LABELS
        or not text.strip()
        or any(c in f for f in (text, context) for c in "\t\n\r")
    ]
    status = 0
    if odd:
        print(f"read_items: {len(odd)} odd items (label, empty text, tab or newline): {odd}")
        status = 1
    if any(context for intent, context, _ in items if intent == "mixed"):
        print("read_items: a mixed item has a context")
        status = 1
    return status


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: intent_set_check.py SET_FOLDER")
    sys.exit(main(Path(sys.argv[1])))
