"""The interface every classifier backend implements.

A backend owns one model. The serving class calls `load()` once before the service reports
SERVING, then calls `score()` from a single worker thread (the micro-batcher's), so a backend
needs no locking and may keep per-thread state (a torch model, a tokenizer). `score()` gets the
texts of several concurrent calls at once (batcher.py); a backend that splits them further
(Detoxify: 512-token windows, forward passes of bounded size) does so inside `score()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from parlance.common.linear_text import LinearTextModel
from parlance.safety.categories import OPENAI_CATEGORIES


class Classifier(ABC):
    @property
    @abstractmethod
    def name(self) -> str:
        """Model id reported to clients, e.g. "profanity-check-1.9.1" or "detoxify-original"."""

    @property
    @abstractmethod
    def evaluated_categories(self) -> tuple[str, ...]:
        """The OpenAI categories this model really scores, in OPENAI_CATEGORIES order."""

    @property
    @abstractmethod
    def default_threshold(self) -> float:
        """The flagging threshold measured for this model, used where settings name none."""

    @property
    def default_output_thresholds(self) -> dict[str, float]:
        """Per-category thresholds for the output direction measured for this model, used
        where settings name none ({}: the default threshold). An answer is judged window by
        window as it streams, so a model may need higher ones there than on input."""
        return {}

    @property
    def default_input_thresholds(self) -> dict[str, float]:
        """Per-category thresholds for the input direction measured for this model, used where
        settings name none ({}: the default threshold)."""
        return {}

    @abstractmethod
    async def load(self) -> None:
        """Loads the model (weights, tokenizer); must not block the event loop."""

    @abstractmethod
    def score(self, texts: list[str]) -> list[dict[str, float]]:
        """One dict per text, in order, mapping each evaluated category to a score in [0, 1].

        Synchronous and CPU/GPU bound: the serving class runs it in its worker thread.
        """

    def export(self) -> LinearTextModel | None:
        """The model as numbers another process scores exactly as this backend does (a linear
        text model of its one evaluated category; ExportClassifier), or None: most models
        cannot be (MiniLM and Detoxify need their networks). Called after load()."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Releases the model; called once after the server drained."""


def check_categories(classifier: Classifier) -> None:
    """Fails at start-up when a backend claims a category that is not an OpenAI one."""
    unknown = [c for c in classifier.evaluated_categories if c not in OPENAI_CATEGORIES]
    if unknown or not classifier.evaluated_categories:
        raise ValueError(
            f"classifier {classifier.name!r} evaluates {classifier.evaluated_categories!r}; "
            f"each must be one of {OPENAI_CATEGORIES!r}"
        )
