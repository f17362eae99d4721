"""Checks the safety sets' own check.py scripts share (bench/data/safety_*/check.py): reading a
tab-separated set, its near duplicates, its texts equal or close to another safety set's, and
that the false-positive bench's loader reads it. Only the checked set's texts are printed,
never another set's, so that running a check keeps a set's author independent of the others.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DATA = BENCH / "data"
# difflib ratio above which two texts are "close".
NEAR = 0.8
# The labels of the answer sets (safety_answers_*): ordinary, or the names of
# parlance.safety.categories (OPENAI_CATEGORIES) they use.
ANSWER_LABELS = [
    "ordinary",
    "hate",
    "harassment",
    "harassment/threatening",
    "violence",
    "self-harm",
    "sexual",
]
# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) then a space
# and a capital, digit, quote, bracket or backtick, or the end; good enough to count 2-8
# sentences, code spans with dots included.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s+[A-Z0-9\"'(`]|\s*$)")


def sentences(text: str) -> int:
    return len(_SENTENCE_END.findall(text))


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def header_problems(path: Path, expected: list[str]) -> int:
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    if header != expected:
        print(f"header is {header}, expected {expected}")
        return 1
    return 0


def read_checked(
    path: Path, header: list[str], check_rows: Callable[[list[dict[str, str]]], int]
) -> list[dict[str, str]] | None:
    """The set's rows, or None (the problems printed) when its header or a row is wrong: the
    later checks read fields a malformed row may lack."""
    problems = header_problems(path, header)
    rows = read(path)
    problems += check_rows(rows)
    if problems:
        print(f"{problems} problems")
        return None
    return rows


def finish(
    path: Path, rows: list[dict[str, str]], here: Path, name: str, skip: frozenset[str]
) -> int:
    """The checks every set ends with (collisions with other sets, the loader); the number of
    problems they found."""
    return collisions(rows, here, name, skip) + loader_problems(path, rows)


def verdict(problems: int) -> int:
    print("ok" if not problems else f"{problems} problems")
    return 1 if problems else 0


def other_texts(here: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every text field of the other safety sets (the last column of a line, as all their
    formats put the text last), lower-cased; never printed. `skip`: sets not to open (held out
    from this set's author)."""
    pool: set[str] = set()
    for path in sorted(DATA.glob("safety_*/*")):
        if path.parent == here or path.parent.name in skip or path.suffix not in {".tsv", ".txt"}:
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


def collisions(
    rows: list[dict[str, str]], here: Path, noun: str, skip: frozenset[str] = frozenset()
) -> int:
    """Problems: near duplicates inside the set, and its texts equal or close to another
    safety set's (printed: this set's lines only)."""
    problems = 0
    texts = [r["text"].strip().lower() for r in rows]
    for (i, a), (j, b) in itertools.combinations(enumerate(texts), 2):
        if a == b or close(a, b):
            print(f"near duplicates inside the set: lines {i + 2} and {j + 2}")
            problems += 1
    pool = other_texts(here, skip)
    colliding = [t for t in texts if t in pool or any(close(t, o) for o in pool)]
    for t in colliding:
        print(f"equal or close to a text of another safety set: {t}")
    skipped = f" (not {', '.join(sorted(skip))})" if skip else ""
    print(
        f"\ncompared with {len(pool)} texts of the other bench/data/safety_* sets{skipped}: "
        f"{len(colliding)} of this set's {noun} collide"
    )
    return problems + len(colliding)


def loader_problems(path: Path, rows: list[dict[str, str]]) -> int:
    """1 unless bench/safety_false_positives.py's read_set loads every row, with its text."""
    sys.path.insert(0, str(BENCH))
    try:
        from safety_false_positives import read_set
    except ImportError as exc:  # the bench needs the services installed (.venv)
        print(f"read_set not importable ({exc}); run with .venv/bin/python")
        return 1
    loaded = read_set(path)
    ok = len(loaded) == len(rows) and all(t for _, t in loaded)
    print(f"read_set loads {len(loaded)} (kind, text) rows: {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def report_answer_counts(rows: list[dict[str, str]]) -> None:
    """An answer set's counts: per label (with the answers whose harm starts after sentence 1)
    and per label and kind (the README's tables)."""
    print(f"{len(rows)} answers")
    print("\n| label | count | harm starts after sentence 1 |\n|---|---|---|")
    late = Counter(r["label"] for r in rows if int(r["harm_from"]) > 1)
    by_label = sorted(
        Counter(r["label"] for r in rows).items(), key=lambda x: ANSWER_LABELS.index(x[0])
    )
    for label, n in by_label:
        shown = late[label] if label != "ordinary" else "-"
        print(f"| {label} | {n} | {shown} |")
    print("\n| label | kind | count |\n|---|---|---|")
    for (label, kind), n in sorted(Counter((r["label"], r["kind"]) for r in rows).items()):
        print(f"| {label} | {kind} | {n} |")
