"""Checks on bench/data/intents_7/messages.tsv that need no model and show no other set
(bench/intent_set_check.py says which), and that the set loads with bench/intent_eval.py's
own loader, so that a format slip shows here and not at its first scoring.

    .venv/bin/python bench/data/intents_7/check.py

bench/intent_set_check.py needs PyYAML (in requirements.lock). Where bench/intent_eval.py
cannot be imported (a partial environment without the gateway package's dependencies), the
set is read with the same csv call as its `read_items` instead, and the script says so.
"""

import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from intent_set_check import LABELS, main  # noqa: E402

status = main(HERE)

# Imported after the check: intent_eval imports the gateway package, which the check needs not.
try:
    from intent_eval import read_items
except ImportError as error:
    print(f"intent_eval not importable here ({error}); reading with read_items' csv call")

    @dataclass
    class Item:
        intent: str
        context: str
        text: str

    def read_items(path: Path) -> list[Item]:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [Item(r["intent"], r["context"] or "", r["text"]) for r in rows]


items = read_items(HERE / "messages.tsv")
by_label = Counter(i.intent for i in items)
with_context = sum(bool(i.context) for i in items)
print(f"read_items: {len(items)} items, {with_context} with context, {dict(by_label)}")
odd = [
    i.text
    for i in items
    if i.intent not in LABELS
    or not i.text.strip()
    or any(c in f for f in (i.text, i.context) for c in "\t\n\r")
]
if odd:
    print(f"read_items: {len(odd)} items with an unknown label, no text, a tab or a newline: {odd}")
    status = 1
if by_label["mixed"] and any(i.context for i in items if i.intent == "mixed"):
    print("read_items: a mixed item has a context")
    status = 1
sys.exit(status)
