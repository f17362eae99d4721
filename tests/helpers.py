"""Transitional: a re-export of parlance.testing (services/testing) for test files written
against the old helpers module. New code imports parlance.testing; this file goes away once
no test imports it."""

from __future__ import annotations

from parlance.testing import *  # noqa: F403
from parlance.testing import __all__ as __all__
from parlance.testing.processes import repo_root

ROOT = repo_root()
