"""The serving class: validation, the micro-batcher in front of the classifier, policy and
metrics.

One inference worker thread (the batcher's) owns the model: scoring is CPU/GPU bound and not
reentrant for every backend, so concurrent Classify calls queue for it, and are scored together,
while the event loop stays free for health checks and new calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from parlance.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from parlance.common.linear_text import LinearTextModel
from parlance.safety import metrics
from parlance.safety.batcher import MicroBatcher
from parlance.safety.classifier.base import Classifier, check_categories
from parlance.safety.policy import Direction, Policy, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    model: str
    # One per text, in the order of the texts.
    verdicts: list[Verdict]


@dataclass(frozen=True, slots=True)
class ClassifierInfo:
    model: str
    evaluated_categories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExportedClassifier:
    model: str
    category: str
    input_threshold: float
    linear: LinearTextModel
    # The scores of the caller's check texts, as Classify gives them.
    check_scores: list[float]


class ClassifierLoadError(RuntimeError):
    """The classifier could not load its model; the service cannot serve."""


class SafetyServing:
    def __init__(
        self,
        classifier: Classifier,
        policy: Policy,
        *,
        max_texts_per_call: int,
        max_text_chars: int,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
    ) -> None:
        check_categories(classifier)
        if policy.evaluated_categories != classifier.evaluated_categories:
            raise ValueError("the policy was built for another classifier's categories")
        self.classifier = classifier
        self.policy = policy
        self.max_texts_per_call = max_texts_per_call
        self.max_text_chars = max_text_chars
        self.batcher = MicroBatcher(
            classifier.score, max_batch_size=max_batch_size, max_wait_s=max_wait_s
        )
        self._loaded = False

    async def start(self) -> None:
        """Loads the model; the host reports SERVING once this returns."""
        started = time.perf_counter()
        try:
            await self.classifier.load()
        except Exception as exc:
            # One line that says what failed and what it means; the traceback follows it.
            log.error(
                "classifier %s failed to load (%s: %s); safety stays NOT_SERVING",
                self.classifier.name,
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            raise ClassifierLoadError(f"classifier {self.classifier.name} failed to load") from exc
        self.batcher.start()
        self._loaded = True
        log.info(
            "classifier loaded",
            extra={
                "model": self.classifier.name,
                "categories": list(self.classifier.evaluated_categories),
                "load_s": round(time.perf_counter() - started, 3),
            },
        )

    async def close(self) -> None:
        self._loaded = False
        # Waits for the batches still queued or on the worker (the server has drained, so at
        # most cancelled calls') before the backend frees the model under it.
        await self.batcher.close()
        await self.classifier.close()

    def info(self) -> ClassifierInfo:
        return ClassifierInfo(self.classifier.name, self.classifier.evaluated_categories)

    async def export(self, check_texts: Sequence[str] = ()) -> ExportedClassifier:
        """The classifier as numbers, with the input threshold Classify applies and its scores
        of `check_texts`, for a client's in-process copy (ExportClassifier);
        FailedPrecondition when it cannot be exported. The check texts are scored as Classify
        scores (the batcher's worker) but are not counted as classified texts: they are a
        client's upkeep, not moderation."""
        self._validate(check_texts)
        if not self._loaded:
            raise Unavailable("the classifier is not loaded")
        linear = self.classifier.export()
        categories = self.classifier.evaluated_categories
        if linear is None or len(categories) != 1:
            raise FailedPrecondition(
                f"classifier {self.classifier.name} cannot be exported: only a linear text model "
                "of one category can be"
            )
        scores = await self.batcher.score(list(check_texts)) if check_texts else []
        return ExportedClassifier(
            model=self.classifier.name,
            category=categories[0],
            input_threshold=self.policy.threshold(Direction.INPUT, categories[0]),
            linear=linear,
            check_scores=[text_scores[categories[0]] for text_scores in scores],
        )

    def _validate(self, texts: Sequence[str]) -> None:
        if len(texts) > self.max_texts_per_call:
            raise InvalidArgument(
                f"at most {self.max_texts_per_call} texts per call, got {len(texts)}",
                param="texts",
            )
        for index, text in enumerate(texts):
            if len(text) > self.max_text_chars:
                raise InvalidArgument(
                    f"texts[{index}] has {len(text)} characters; "
                    f"the limit is {self.max_text_chars}",
                    param="texts",
                )

    async def classify(self, texts: Sequence[str], direction: Direction) -> ClassifyResult:
        self._validate(texts)
        if not texts:
            return ClassifyResult(self.classifier.name, [])
        if not self._loaded:
            raise Unavailable("the classifier is not loaded")

        started = time.perf_counter()
        scores = await self.batcher.score(list(texts))
        metrics.CLASSIFICATION_LATENCY.labels(direction.value).observe(
            time.perf_counter() - started
        )

        verdicts = [self.policy.apply(text_scores, direction) for text_scores in scores]
        metrics.BATCH_SIZE.labels(direction.value).observe(len(texts))
        metrics.TEXTS_CLASSIFIED.labels(direction.value).inc(len(texts))
        flagged = 0
        for verdict in verdicts:
            flagged += verdict.flagged
            for category in verdict.categories:
                if category.flagged:
                    metrics.FLAGS.labels(category.category, direction.value).inc()
        log.info(
            "classified",
            extra={"texts": len(texts), "flagged": flagged, "direction": direction.value},
        )
        return ClassifyResult(self.classifier.name, verdicts)
