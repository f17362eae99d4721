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


def _minilm(settings: SafetySettings) -> Classifier:
    from parlance.safety.classifier.minilm import MiniLMClassifier

    return MiniLMClassifier(
        model_path=settings.minilm_model_path,
        head_path=settings.minilm_head_path,
        device=settings.device,
        max_batch_size=settings.max_batch_size,
        threads=settings.torch_threads,
        cache_units=settings.minilm_cache_units,
        runtime=settings.minilm_runtime,
        onnx_cache=settings.minilm_onnx_cache or None,
    )


def _detoxify(settings: SafetySettings) -> Classifier:
    from parlance.safety.classifier.detoxify import DetoxifyClassifier

    return DetoxifyClassifier(
        settings.detoxify_model_type,
        checkpoint=settings.detoxify_checkpoint,
        huggingface_config_path=settings.detoxify_hf_config_path,
        device=settings.device,
        max_batch_size=settings.max_batch_size,
    )


# Backends are imported lazily so that one's heavy dependencies (torch) are needed only when
# it is chosen.
CLASSIFIERS: dict[str, Callable[[SafetySettings], Classifier]] = {
    "minilm": _minilm,
    "profanity": _profanity,
    "detoxify": _detoxify,
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
