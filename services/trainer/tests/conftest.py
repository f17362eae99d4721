"""Trainer tests: nothing may come from a model hub (the embedded MiniLM is a local folder)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
