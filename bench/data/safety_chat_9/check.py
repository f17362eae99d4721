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

import csv
import difflib
import itertools
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
BENCH = DATA.parent
MESSAGES = HERE / "messages.tsv"
HEADER = ["kind", "text"]
MIN_MESSAGES = 650
MIN_KINDS = 20
# Held-out folders of other engineers that this check must not read.
SKIP = {"safety_eval_9"}
NEAR = 0.8


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def other_texts() -> list[str]:
    """Every text field of the other safety sets (the last column of a line), lower-cased;
    never printed."""
    pool: set[str] = set()
    for path in sorted(DATA.glob("safety_*/*")):
        if path.parent == HERE or path.parent.name in SKIP or path.suffix not in {".tsv", ".txt"}:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                pool.add(line.split("\t")[-1].strip().lower())
    return sorted(pool)


def close(a: str, b: str) -> bool:
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return (
        matcher.real_quick_ratio() > NEAR
        and matcher.quick_ratio() > NEAR
        and matcher.ratio() > NEAR
    )


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
    problems = 0
    with MESSAGES.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    if header != HEADER:
        print(f"header is {header}, expected {HEADER}")
        problems += 1
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

    texts = [r["text"].strip().lower() for r in rows]
    for (i, a), (j, b) in itertools.combinations(enumerate(texts), 2):
        if a == b or close(a, b):
            print(f"near duplicates inside the set: lines {i + 2} and {j + 2}")
            problems += 1

    pool = other_texts()
    colliding = [t for t in texts if t in pool or any(close(t, o) for o in pool)]
    for t in colliding:
        print(f"equal or close to a text of another safety set: {t}")
    problems += len(colliding)
    print(
        f"\ncompared with {len(pool)} texts of the other bench/data/safety_* sets "
        f"(not {', '.join(sorted(SKIP))}): {len(colliding)} of this set's messages collide"
    )

    sys.path.insert(0, str(BENCH))
    try:
        from safety_false_positives import read_set
    except ImportError as exc:  # the bench needs the services installed (.venv)
        print(f"read_set not importable ({exc}); run with .venv/bin/python")
        problems += 1
    else:
        loaded = read_set(MESSAGES)
        ok = len(loaded) == len(rows) and all(t for _, t in loaded)
        print(f"read_set loads {len(loaded)} (kind, text) rows: {'ok' if ok else 'MISMATCH'}")
        problems += not ok
    print("ok" if not problems else f"{problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
