"""Validate bench/data/safety_eval_11 and print its counts.

Usage (from the repository root): .venv/bin/python bench/data/safety_eval_11/check.py

Checks: every non-comment line has the right number of tab-separated fields; toxic labels are
known categories, not repeated within a line, and harassment/threatening comes with harassment;
benign groups and kinds are allowed (benign is only everyday); no empty or padded text; no
duplicate text (case-insensitive, whitespace collapsed) within or across the two files; no near
duplicates within the set (bench/safety_set_check.py's `close`, difflib ratio above 0.8, or word
Jaccard at or above 0.7); the minimum counts issue #19 asked for; and that
bench/safety_eval.py's `load_set` reads every line with known labels; and no text equal or
close (bench/safety_set_check.py's `close`) to a text of another bench/data/safety_* set, skipping
the other sets named *_11 (written at the same time by others). The other sets' texts are read
only for that comparison and never printed: only this set's colliding lines are. Exits 1 on any
problem. Runs no classifier.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from safety_eval_check import main  # noqa: E402

# The other sets named *_11, written at the same time by others: not read.
SKIP = frozenset(p.name for p in HERE.parent.glob("safety_*_11") if p != HERE)


if __name__ == "__main__":
    sys.exit(main(HERE, SKIP))
