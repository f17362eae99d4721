"""Validate bench/data/safety_eval_10 and print its counts.

Usage (from the repository root): .venv/bin/python bench/data/safety_eval_10/check.py

Checks: every non-comment line has the right number of tab-separated fields; toxic labels are
known categories, not repeated within a line, and harassment/threatening comes with harassment;
benign groups and kinds are allowed (benign is only everyday); no empty or padded text; no
duplicate text (case-insensitive, whitespace collapsed) within or across the two files; no near
duplicates within the set (bench/safety_set_check.py's `close`, difflib ratio above 0.8, or word
Jaccard at or above 0.7); the minimum counts issue #19 asked for; and that
bench/safety_eval.py's `load_set` reads every line with known labels. Exits 1 on any problem.
Runs no classifier and opens no other set's texts.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from safety_eval_check import main  # noqa: E402

# Opens no other set's texts (no collision check: written before the eleventh sets added one).


if __name__ == "__main__":
    sys.exit(main(HERE))
