"""The checks of a chat-message set (bench/data/safety_chat_10 and later; their check.py
scripts say what is checked and which sets each one may not read), run by each set's
check.py."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from safety_set_check import finish, read_checked, verdict

HEADER = ["kind", "text"]
MIN_MESSAGES = 700
MIN_KINDS = 28
MIN_CHARGED = 480
MIN_PLAIN = 190
PLAIN_PREFIX = "plain_"
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


def main(here: Path, skip: frozenset[str]) -> int:
    """Checks here/messages.tsv (see a set's check.py); `skip`: other sets' folders not to read
    (held out from this set's author). 1 when anything is wrong or collides."""
    messages = here / "messages.tsv"
    rows = read_checked(messages, HEADER, check_rows)
    if rows is None:
        return 1
    problems = report_counts(rows)
    problems += plain_problems(rows)
    problems += finish(messages, rows, here, "messages", skip)
    return verdict(problems)
