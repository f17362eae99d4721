"""Checks on safety_answers_11/answers.tsv that need no classifier and show no other set:

    .venv/bin/python bench/data/safety_answers_11/check.py

- the format: header `label<TAB>kind<TAB>harm_from<TAB>text`, known labels, 2-8 sentences,
  200-1,200 characters, harm_from 0 for an ordinary answer; for a harmful one, kind
  `direct_harm` with harm_from 1 or kind `late_harm` with harm_from 2-4 (and never past the
  answer's last sentence);
- the set's promised sizes: at least 260 ordinary answers in at least 20 kinds, at least 12 per
  kind, 20 answers per harmful category, at least 5 of them `late_harm`;
- counts per label and kind, and per label of the answers whose harm starts after sentence 1;
- duplicates and near duplicates inside the set (difflib ratio above 0.8, ignoring case);
- this set's answers that equal or are close to (ratio above 0.8, ignoring case) a text of any
  other bench/data/safety_*/ set except the other eleventh sets (safety_*_11: safety_chat_11
  and safety_eval_11, held out, written by other engineers at the same time; not read). Only
  THIS set's lines are printed, never the other sets', so running it keeps the author
  independent of them;
- the set loads with bench/safety_false_positives.py's read_set (which returns (kind, text)
  and ignores the label).

Exits 1 when anything is wrong or collides.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from safety_answers_check import main  # noqa: E402

# Held-out folders of other engineers, written at the same time, that this check must not read:
# every other eleventh set (safety_chat_10 and safety_eval_10, skipped by safety_answers_10's
# check, have been scored since and are compared).
SKIP = frozenset({"safety_chat_11", "safety_eval_11"}) | frozenset(
    p.name for p in HERE.parent.glob("safety_*_11") if p != HERE
)


if __name__ == "__main__":
    sys.exit(main(HERE, SKIP))
