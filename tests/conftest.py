"""Cross-service tests: the whole stack as real processes (scripts/devstack.py), a real
redis-server of their own, the real SmolLM2 model through llama.cpp. Their fixtures (redis_server,
stacks, stack, ...) come from parlance.testing's pytest plugin, like every suite's."""

from __future__ import annotations

import sys
from pathlib import Path

# Transitional: test files that still `import helpers` (a re-export of parlance.testing).
sys.path.insert(0, str(Path(__file__).resolve().parent))
