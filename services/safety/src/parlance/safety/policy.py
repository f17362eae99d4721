"""Thresholds per category and direction, and the verdicts they give.

flagged = any evaluated category's score >= its threshold for the text's direction. Output
thresholds may differ from input ones: a false positive on the way out cuts an answer the
user already half-read, one on the way in only asks them to rephrase.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


class Direction(StrEnum):
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class CategoryVerdict:
    category: str
    score: float
    flagged: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    flagged: bool
    # One per evaluated category, in the classifier's order.
    categories: tuple[CategoryVerdict, ...]


class Policy:
    def __init__(
        self,
        evaluated_categories: Sequence[str],
        default_threshold: float,
        overrides: Mapping[Direction, Mapping[str, float]] | None = None,
    ) -> None:
        self.evaluated_categories = tuple(evaluated_categories)
        overrides = overrides or {}
        self._thresholds: dict[Direction, dict[str, float]] = {}
        for direction in Direction:
            per_category = overrides.get(direction, {})
            for category in per_category:
                if category not in self.evaluated_categories:
                    log.warning(
                        "threshold for %s (%s) is ignored: the classifier does not evaluate it",
                        category,
                        direction,
                    )
            self._thresholds[direction] = {
                category: per_category.get(category, default_threshold)
                for category in self.evaluated_categories
            }

    def threshold(self, direction: Direction, category: str) -> float:
        return self._thresholds[direction][category]

    def apply(self, scores: Mapping[str, float], direction: Direction) -> Verdict:
        thresholds = self._thresholds[direction]
        categories = tuple(
            CategoryVerdict(category, scores[category], scores[category] >= thresholds[category])
            for category in self.evaluated_categories
        )
        return Verdict(any(c.flagged for c in categories), categories)
