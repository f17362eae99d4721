"""Checks on bench/data/intents_5/messages.tsv that need no model and show no other set
(bench/intent_set_check.py says which), and that the set loads with bench/intent_eval.py's
own loader, so that a format slip shows here and not at its first scoring.

    .venv/bin/python bench/data/intents_5/check.py
"""

import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from intent_set_check import LABELS, main  # noqa: E402

status = main(HERE)

# Imported after the check: intent_eval imports the gateway package, which the check needs not.
from intent_eval import read_items  # noqa: E402

items = read_items(HERE / "messages.tsv")
by_label = Counter(i.intent for i in items)
with_context = sum(bool(i.context) for i in items)
print(f"read_items: {len(items)} items, {with_context} with context, {dict(by_label)}")
odd = [i.text for i in items if i.intent not in LABELS or "\t" in i.text or "\n" in i.text]
if odd:
    print(f"read_items: {len(odd)} items with an unknown label, a tab or a newline: {odd}")
    status = 1
sys.exit(status)
