"""Checks on bench/data/intents_6/messages.tsv that need no model and show no other set
(bench/intent_set_check.py says which), and that the set loads with bench/intent_eval.py's
own loader, so that a format slip shows here and not at its first scoring.

    .venv/bin/python bench/data/intents_6/check.py

bench/intent_set_check.py needs PyYAML (in requirements.lock).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from intent_set_check import loads_with_intent_eval, main  # noqa: E402

sys.exit(max(main(HERE), loads_with_intent_eval(HERE)))
