"""Checks on safety_chat_9/messages.tsv that need no classifier and show no other set:

    .venv/bin/python bench/data/safety_chat_9/check.py

- the format: header `kind<TAB>text`, two columns a line (read with csv.QUOTE_NONE), a
  non-empty kind and text, no surrounding spaces;
- the set's promised size: at least 650 messages in at least 20 kinds;
- counts per kind;
- duplicates and near duplicates inside the set (difflib ratio above 0.8, ignoring case);
- this set's messages that equal or are close to (ratio above 0.8, ignoring case) a text of any
  other bench/data/safety_*/ set, except safety_eval_9 (held out, written by another engineer at
  the same time; not read). Only THIS set's lines are printed, never the other sets', so running
  it keeps the author independent of them;
- the set loads with bench/safety_false_positives.py's read_set.

Exits 1 when anything is wrong or collides.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from safety_set_check import (  # noqa: E402
    collisions,
    header_problems,
    loader_problems,
    read,
)

MESSAGES = HERE / "messages.tsv"
HEADER = ["kind", "text"]
MIN_MESSAGES = 650
MIN_KINDS = 20
# Held-out folders of other engineers that this check must not read.
SKIP = frozenset({"safety_eval_9"})


def check_rows(rows: list[dict[str, str]]) -> int:
    problems = 0
    for n, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            print(f"line {n}: wrong number of columns")
            problems += 1
            continue
        kind, text = row["kind"], row["text"]
        if not kind or not text.strip() or text != text.strip() or kind != kind.strip():
            print(f"line {n}: empty kind or text, or surrounding spaces")
            problems += 1
    return problems


def main() -> int:
    problems = header_problems(MESSAGES, HEADER)
    rows = read(MESSAGES)
    problems += check_rows(rows)
    if problems:
        print(f"{problems} problems")
        return 1
    kinds = Counter(r["kind"] for r in rows)
    print(f"{len(rows)} messages in {len(kinds)} kinds")
    if len(rows) < MIN_MESSAGES or len(kinds) < MIN_KINDS:
        print(f"want >= {MIN_MESSAGES} messages in >= {MIN_KINDS} kinds")
        problems += 1
    print("\n| kind | count |\n|---|---|")
    for kind, n in sorted(kinds.items()):
        print(f"| {kind} | {n} |")

    problems += collisions(rows, HERE, "messages", SKIP)

    problems += loader_problems(MESSAGES, rows)
    print("ok" if not problems else f"{problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
