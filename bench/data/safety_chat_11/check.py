"""Checks on safety_chat_11/messages.tsv that need no classifier and show no other set:

    .venv/bin/python bench/data/safety_chat_11/check.py

- the format: header `kind<TAB>text`, two columns a line (read with csv.QUOTE_NONE), a
  non-empty kind and text, no surrounding spaces;
- the set's promised size: at least 700 messages in at least 28 kinds, of which at least 480
  in the charged kinds and at least 190 in the `plain_*` kinds;
- counts per kind, and the charged and plain totals;
- the `plain_*` kinds hold none of the charged words in PLAIN_FORBIDDEN (whole words, ignoring
  case), so that their refusal rate measures ordinary traffic only;
- duplicates and near duplicates inside the set (difflib ratio above 0.8, ignoring case);
- this set's messages that equal or are close to (ratio above 0.8, ignoring case) a text of any
  other bench/data/safety_*/ set, except any other folder named safety_*_11 (held out,
  written by other engineers at the same time, e.g. safety_eval_11 and safety_answers_11;
  not read). Only THIS set's lines are printed, never the other sets', so running it keeps
  the author independent of them;
- the set loads with bench/safety_false_positives.py's read_set.

Exits 1 when anything is wrong or collides.
"""

from __future__ import annotations

import re
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
MIN_MESSAGES = 700
MIN_KINDS = 28
MIN_CHARGED = 480
MIN_PLAIN = 190
PLAIN_PREFIX = "plain_"
# Held-out folders of other engineers, written at the same time, that this check must not
# read: every other safety_*_11 folder (safety_eval_10 and safety_answers_10, skipped by
# safety_chat_10's check, have been scored since).
SKIP = frozenset(
    {p.name for p in HERE.parent.glob("safety_*_11") if p.name != HERE.name}
    | {"safety_eval_11", "safety_answers_11"}
)
# Words that must not appear in a plain_* message (whole words, ignoring case).
PLAIN_FORBIDDEN = re.compile(
    r"\b(kill\w*|die[ds]?|dying|dead|death|murder\w*|shoot\w*|shot|gun\w*|weapon\w*|"
    r"bomb\w*|blood\w*|knife|knives|stab\w*|attack\w*|poison\w*|drug\w*|overdose\w*|"
    r"suicid\w*|self.harm|cut|cuts|cutting|hang\w*|choke\w*|choking|fight\w*|punch\w*|"
    r"drunk|drink\w*|alcohol|smok\w*|vap\w*|weed|sex\w*|porn\w*|naked|hate|racis\w*|"
    r"nazi\w*|terror\w*|explo\w*|abort\w*|execut\w*|slave|war|wars|crime\w*|hurt\w*|"
    r"pain|pains|painful|painkill\w*|wound\w*|injur\w*|threat\w*|destroy\w*|"
    r"assault\w*|rape\w*|abus\w*)\b",
    re.IGNORECASE,
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


def plain_problems(rows: list[dict[str, str]]) -> int:
    """Lines of plain_* kinds that hold a charged word (the word is printed)."""
    problems = 0
    for n, row in enumerate(rows, start=2):
        if row["kind"].startswith(PLAIN_PREFIX):
            found = PLAIN_FORBIDDEN.search(row["text"])
            if found:
                print(f"line {n}: plain message holds the charged word {found.group(0)!r}")
                problems += 1
    return problems


def report_counts(rows: list[dict[str, str]]) -> int:
    kinds = Counter(r["kind"] for r in rows)
    plain = sum(n for k, n in kinds.items() if k.startswith(PLAIN_PREFIX))
    charged = len(rows) - plain
    print(f"{len(rows)} messages in {len(kinds)} kinds: {charged} charged, {plain} plain")
    problems = 0
    if len(rows) < MIN_MESSAGES or len(kinds) < MIN_KINDS:
        print(f"want >= {MIN_MESSAGES} messages in >= {MIN_KINDS} kinds")
        problems += 1
    if charged < MIN_CHARGED or plain < MIN_PLAIN:
        print(f"want >= {MIN_CHARGED} charged and >= {MIN_PLAIN} plain messages")
        problems += 1
    print("\n| kind | count |\n|---|---|")
    for kind, n in sorted(kinds.items(), key=lambda x: (x[0].startswith(PLAIN_PREFIX), x[0])):
        print(f"| {kind} | {n} |")
    return problems


def main() -> int:
    problems = header_problems(MESSAGES, HEADER)
    rows = read(MESSAGES)
    problems += check_rows(rows)
    if problems:
        print(f"{problems} problems")
        return 1
    problems += report_counts(rows)
    problems += plain_problems(rows)
    problems += collisions(rows, HERE, "messages", SKIP)
    problems += loader_problems(MESSAGES, rows)
    print("ok" if not problems else f"{problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
