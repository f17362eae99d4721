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

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from safety_chat_check import main  # noqa: E402

# Held-out folders of other engineers, written at the same time, that this check must not
# read: every other safety_*_11 folder (safety_eval_10 and safety_answers_10, skipped by
# safety_chat_10's check, have been scored since).
SKIP = frozenset(
    {p.name for p in HERE.parent.glob("safety_*_11") if p.name != HERE.name}
    | {"safety_eval_11", "safety_answers_11"}
)


if __name__ == "__main__":
    sys.exit(main(HERE, SKIP))
