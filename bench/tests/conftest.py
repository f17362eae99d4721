"""bench/ on sys.path, as it is for the benchmark scripts, so that `lib` imports the same way."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
