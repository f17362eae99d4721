"""The checks of an answer set (bench/data/safety_answers_10 and later; their check.py scripts
say what is checked and which sets each one may not read), run by each set's check.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from safety_set_check import (
    ANSWER_LABELS,
    finish,
    read_checked,
    report_answer_counts,
    sentences,
    verdict,
)

HEADER = ["label", "kind", "harm_from", "text"]
HARMFUL_KINDS = {"direct_harm", "late_harm"}
PER_CATEGORY = 20
MIN_LATE = 5
MIN_ORDINARY = 260
MIN_ORDINARY_KINDS = 20
MIN_PER_KIND = 12
MIN_CHARS, MAX_CHARS = 200, 1200


def harm_ok(label: str, kind: str, harm_from: int, count: int) -> bool:
    """Whether kind and harm_from agree with the label and the sentence count."""
    if label == "ordinary":
        return harm_from == 0 and kind not in HARMFUL_KINDS and bool(kind)
    if kind == "direct_harm":
        return harm_from == 1
    if kind == "late_harm":
        return 2 <= harm_from <= 4 and harm_from <= count
    return False


def row_problems(n: int, row: dict[str, str]) -> int:
    """Label, text, length, sentence count and harm_from of one row (line n); problems found."""
    label, kind, text = row["label"], row["kind"], row["text"]
    count = sentences(text)
    problems = 0
    if label not in ANSWER_LABELS:
        print(f"line {n}: unknown label {label!r}")
        problems += 1
    if not text.strip() or text != text.strip():
        print(f"line {n}: empty text or surrounding spaces")
        problems += 1
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        print(f"line {n}: {len(text)} characters: {text}")
        problems += 1
    if not 2 <= count <= 8:
        print(f"line {n}: {count} sentences: {text}")
        problems += 1
    try:
        harm_from = int(row["harm_from"])
    except ValueError:
        print(f"line {n}: harm_from {row['harm_from']!r} is not a number")
        return problems + 1
    if not harm_ok(label, kind, harm_from, count):
        print(f"line {n}: harm_from {harm_from}, kind {kind!r}, {label}, {count} sentences")
        problems += 1
    return problems


def check_rows(rows: list[dict[str, str]]) -> int:
    """Every row's columns and fields; the problems found."""
    problems = 0
    for n, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            print(f"line {n}: wrong number of columns")
            problems += 1
            continue
        problems += row_problems(n, row)
    return problems


def check_sizes(rows: list[dict[str, str]]) -> int:
    problems = 0
    ordinary = [r for r in rows if r["label"] == "ordinary"]
    kinds = Counter(r["kind"] for r in ordinary)
    if len(ordinary) < MIN_ORDINARY or len(kinds) < MIN_ORDINARY_KINDS:
        print(
            f"{len(ordinary)} ordinary answers in {len(kinds)} kinds: want "
            f">= {MIN_ORDINARY} in >= {MIN_ORDINARY_KINDS}"
        )
        problems += 1
    for kind, n in sorted(kinds.items()):
        if n < MIN_PER_KIND:
            print(f"ordinary kind {kind}: {n} answers, want >= {MIN_PER_KIND}")
            problems += 1
    for label in ANSWER_LABELS[1:]:
        mine = [r for r in rows if r["label"] == label]
        late = sum(r["kind"] == "late_harm" for r in mine)
        if len(mine) != PER_CATEGORY or late < MIN_LATE:
            print(
                f"{label}: {len(mine)} answers, {late} late_harm: want {PER_CATEGORY}, "
                f">= {MIN_LATE}"
            )
            problems += 1
    return problems


def main(here: Path, skip: frozenset[str]) -> int:
    """Checks here/answers.tsv (see a set's check.py); `skip`: other sets' folders not to read
    (held out from this set's author). 1 when anything is wrong or collides."""
    answers = here / "answers.tsv"
    rows = read_checked(answers, HEADER, check_rows)
    if rows is None:
        return 1
    problems = check_sizes(rows)
    report_answer_counts(rows)
    late = Counter((r["label"], r["harm_from"]) for r in rows if r["kind"] == "late_harm")
    print("\nlate_harm by label and harm_from:", dict(sorted(late.items())))
    problems += finish(answers, rows, here, "answers", skip)
    return verdict(problems)
