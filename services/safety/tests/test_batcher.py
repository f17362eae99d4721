"""The micro-batcher around the real profanity classifier: how calls are grouped into model
calls, and what callers get when a model call fails."""

from __future__ import annotations

import asyncio

import pytest

from parlance.common.errors import Unavailable
from parlance.safety.batcher import MicroBatcher
from parlance.safety.classifier.profanity import ProfanityClassifier


class RecordingProfanity(ProfanityClassifier):
    """The real classifier, recording the size of each model call it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        self.calls.append(len(texts))
        if "fail" in texts:
            raise RuntimeError("the model failed")
        return super().score(texts)


@pytest.fixture
async def profanity() -> RecordingProfanity:
    classifier = RecordingProfanity()
    await classifier.load()
    return classifier


async def test_calls_are_gathered_but_never_split(profanity) -> None:
    batcher = MicroBatcher(profanity.score, max_batch_size=4, max_wait_s=0.5)
    batcher.start()
    try:
        calls = [["You are an idiot."], ["hello"] * 6, ["How do I bake bread?"], ["hi", "there"]]
        results = await asyncio.gather(*(batcher.score(texts) for texts in calls))
    finally:
        await batcher.close()
    assert [len(r) for r in results] == [1, 6, 1, 2]
    assert results[0][0]["harassment"] > 0.97
    # The 6-text call is a model call of its own; the others share one (1 + 1 + 2 = 4).
    assert sorted(profanity.calls) == [4, 6]
    assert batcher.batches == 2


async def test_a_failed_model_call_fails_its_callers_only(profanity) -> None:
    batcher = MicroBatcher(profanity.score, max_batch_size=1, max_wait_s=0.0)
    batcher.start()
    try:
        failed, ok = await asyncio.gather(
            batcher.score(["fail"]), batcher.score(["hello"]), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert isinstance(failed, RuntimeError)
    assert isinstance(ok, list) and len(ok) == 1


async def test_closed_batcher_is_unavailable(profanity) -> None:
    batcher = MicroBatcher(profanity.score, max_batch_size=4, max_wait_s=0.0)
    batcher.start()
    await batcher.close()
    with pytest.raises(Unavailable):
        await batcher.score(["hello"])
