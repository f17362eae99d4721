"""Classifier backends and the registry that picks one by the `SAFETY_CLASSIFIER` setting."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from parlance.safety.classifier.base import Classifier

if TYPE_CHECKING:
    from parlance.safety.config import SafetySettings


def _profanity(settings: SafetySettings) -> Classifier:
    from parlance.safety.classifier.profanity import ProfanityClassifier

    return ProfanityClassifier()


# Backends are imported lazily so that one's heavy dependencies (torch) are needed only when
# it is chosen.
CLASSIFIERS: dict[str, Callable[[SafetySettings], Classifier]] = {
    "profanity": _profanity,
}


def build_classifier(settings: SafetySettings) -> Classifier:
    try:
        factory = CLASSIFIERS[settings.classifier]
    except KeyError:
        raise ValueError(
            f"unknown classifier {settings.classifier!r}; choose one of {sorted(CLASSIFIERS)}"
        ) from None
    return factory(settings)


__all__ = ["CLASSIFIERS", "Classifier", "build_classifier"]
