"""The fixed threshold rule of services/safety/training/set_thresholds.py (no encoder)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import set_thresholds


def test_lowest_grid_value_within_the_rate_and_never_below_the_floor() -> None:
    # 100 safe rows: column 0 scores 0.00-0.99 (one row per step), column 1 all low.
    column = np.arange(100) / 100
    scores = np.stack([column, np.full(100, 0.1)], axis=1)
    thresholds = set_thresholds.rule_thresholds(scores, safe_rate=0.02, floor=0.5)
    # >= 0.98 flags two rows (0.98, 0.99): 2%; >= 0.97 flags three.
    assert thresholds[0] == pytest.approx(0.98)
    assert thresholds[1] == pytest.approx(0.5)


def test_no_grid_value_within_the_rate_is_an_error_not_the_floor() -> None:
    # Every safe text scores above the top of the grid in column 1: no threshold on the
    # grid flags at most 2% of them. Before the fix this silently gave the 0.5 floor.
    scores = np.stack([np.full(50, 0.1), np.full(50, 0.999)], axis=1)
    with pytest.raises(ValueError, match="column 1"):
        set_thresholds.rule_thresholds(scores, safe_rate=0.02, floor=0.5)
