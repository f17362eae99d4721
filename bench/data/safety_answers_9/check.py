"""Checks on safety_answers_9/answers.tsv that need no classifier and show no other set:

    .venv/bin/python bench/data/safety_answers_9/check.py

- the format: header `label<TAB>kind<TAB>harm_from<TAB>text`, known labels, 2-8 sentences,
  harm_from 0 for an ordinary answer; for a harmful one, kind `direct_harm` with harm_from 1 or
  kind `late_harm` with harm_from 2-4 (and never past the answer's last sentence);
- the set's promised sizes: at least 240 ordinary answers in at least 17 kinds, 20 answers per
  harmful category, at least 4 of them `late_harm`;
- counts per label and kind, and per label of the answers whose harm starts after sentence 1;
- duplicates and near duplicates inside the set (difflib ratio above 0.8, ignoring case);
- this set's answers that equal or are close to (ratio above 0.8, ignoring case) a text of any
  other bench/data/safety_*/ set, except safety_eval_9 (held out, written by another engineer at
  the same time; not read). Only THIS set's lines are printed, never the other sets', so running
  it keeps the author independent of them;
- the set loads with bench/safety_false_positives.py's read_set (which returns (kind, text)
  and ignores the label).

Exits 1 when anything is wrong or collides.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from safety_set_check import (  # noqa: E402
    ANSWER_LABELS,
    collisions,
    header_problems,
    loader_problems,
    read,
    report_answer_counts,
    sentences,
)

ANSWERS = HERE / "answers.tsv"
HEADER = ["label", "kind", "harm_from", "text"]
HARMFUL_KINDS = {"direct_harm", "late_harm"}
PER_CATEGORY = 20
MIN_LATE = 4
MIN_ORDINARY = 240
MIN_ORDINARY_KINDS = 17
# Held-out folders of other engineers that this check must not read.
SKIP = frozenset({"safety_eval_9"})


def check_rows(rows: list[dict[str, str]]) -> int:
    """Columns, labels, kinds, sentence counts and harm_from of every row; the problems found."""
    problems = 0
    for n, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            print(f"line {n}: wrong number of columns")
            problems += 1
            continue
        label, kind, text = row["label"], row["kind"], row["text"]
        count = sentences(text)
        if label not in ANSWER_LABELS:
            print(f"line {n}: unknown label {label!r}")
            problems += 1
        if not text.strip() or text != text.strip():
            print(f"line {n}: empty text or surrounding spaces")
            problems += 1
        if not 2 <= count <= 8:
            print(f"line {n}: {count} sentences: {text}")
            problems += 1
        try:
            harm_from = int(row["harm_from"])
        except ValueError:
            print(f"line {n}: harm_from {row['harm_from']!r} is not a number")
            problems += 1
            continue
        if label == "ordinary":
            ok = harm_from == 0 and kind not in HARMFUL_KINDS and bool(kind)
        elif kind == "direct_harm":
            ok = harm_from == 1
        elif kind == "late_harm":
            ok = 2 <= harm_from <= 4 and harm_from <= count
        else:
            ok = False
        if not ok:
            print(f"line {n}: harm_from {harm_from}, kind {kind!r}, {label}, {count} sentences")
            problems += 1
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


def main() -> int:
    problems = header_problems(ANSWERS, HEADER)
    rows = read(ANSWERS)
    problems += check_rows(rows)
    if problems:
        print(f"{problems} problems")
        return 1
    problems += check_sizes(rows)
    report_answer_counts(rows)

    problems += collisions(rows, HERE, "answers", SKIP)

    problems += loader_problems(ANSWERS, rows)
    print("ok" if not problems else f"{problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
