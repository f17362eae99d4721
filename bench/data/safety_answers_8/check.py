"""Checks on safety_answers_8/answers.tsv that need no classifier and show no other set:

    .venv/bin/python bench/data/safety_answers_8/check.py

- the format: header `label<TAB>kind<TAB>harm_from<TAB>text`, known labels, 2-8 sentences,
  harm_from 0 for an ordinary answer and 1..sentences for a harmful one;
- counts per label and kind, and per label of the answers whose harm starts after sentence 1;
- duplicates and near duplicates inside the set (difflib ratio above 0.8, ignoring case);
- this set's answers that equal or are close to (ratio above 0.8, ignoring case) a text of any
  other bench/data/safety_*/ set. Only THIS set's lines are printed, never the other sets', so
  running it keeps the author independent of them;
- the set loads with bench/safety_false_positives.py's read_set (which returns (kind, text)
  and ignores the label: it has no loader for labelled answers yet).

Exits 1 when anything is wrong or collides.
"""

from __future__ import annotations

import sys
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


def check_rows(rows: list[dict[str, str]]) -> int:
    """Columns, labels, sentence counts and harm_from of every row; the problems found."""
    problems = 0
    for n, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            print(f"line {n}: wrong number of columns")
            problems += 1
            continue
        label, text = row["label"], row["text"]
        count = sentences(text)
        if label not in ANSWER_LABELS:
            print(f"line {n}: unknown label {label!r}")
            problems += 1
        if not 2 <= count <= 8:
            print(f"line {n}: {count} sentences: {text}")
            problems += 1
        harm_from = int(row["harm_from"])
        if (label == "ordinary") != (harm_from == 0) or harm_from > count:
            print(f"line {n}: harm_from {harm_from} with label {label} and {count} sentences")
            problems += 1

    return problems


def main() -> int:
    problems = header_problems(ANSWERS, HEADER)
    rows = read(ANSWERS)
    problems += check_rows(rows)
    report_answer_counts(rows)

    problems += collisions(rows, HERE, "answers")

    problems += loader_problems(ANSWERS, rows)
    print("ok" if not problems else f"{problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
