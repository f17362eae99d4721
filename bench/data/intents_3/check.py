"""Checks on bench/data/intents_3/messages.tsv that need no model and show no other set
(bench/intent_set_check.py says which).

    .venv/bin/python bench/data/intents_3/check.py
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from intent_set_check import main  # noqa: E402

sys.exit(main(HERE))
