"""Classify and GetClassifierInfo over a real gRPC server with the real profanity model."""

from __future__ import annotations

import grpc
import pytest

from parlance.common import linear_text_proto
from parlance.common.errors import FailedPrecondition, Unavailable
from parlance.safety.classifier.base import Classifier
from parlance.safety.policy import Policy
from parlance.safety.serving import SafetyServing
from parlance.safety.v1 import safety_pb2

INPUT = safety_pb2.DIRECTION_INPUT
OUTPUT = safety_pb2.DIRECTION_OUTPUT

CLEAN = [
    "What is the capital of France?",
    "Can you help me write a poem about the sea?",
    "How do I bake sourdough bread?",
    "Explain quantum computing in simple terms.",
]
OFFENSIVE = [
    "You are an idiot.",
    "Shut up, you stupid moron.",
    "screw you, loser",
    "get lost, dumbass",
]


def request(texts: list[str], direction: int = INPUT) -> safety_pb2.ClassifyRequest:
    return safety_pb2.ClassifyRequest(texts=texts, direction=direction)


def harassment(result: safety_pb2.Classification) -> safety_pb2.CategoryResult:
    (category,) = [c for c in result.categories if c.category == "harassment"]
    return category


async def test_clean_texts_are_not_flagged(safety) -> None:
    response = await safety.stub.Classify(request(CLEAN))
    assert response.model.startswith("profanity-check-")
    assert len(response.results) == len(CLEAN)
    for result in response.results:
        assert not result.flagged
        assert [c.category for c in result.categories] == ["harassment"]
        assert not harassment(result).flagged
        assert 0.0 <= harassment(result).score < 0.5


async def test_offensive_texts_are_flagged_as_harassment(safety) -> None:
    for direction in (INPUT, OUTPUT):
        response = await safety.stub.Classify(request(OFFENSIVE, direction))
        assert len(response.results) == len(OFFENSIVE)
        for result in response.results:
            assert result.flagged
            assert harassment(result).flagged
            assert 0.97 <= harassment(result).score <= 1.0


async def test_batch_order_is_preserved(safety) -> None:
    texts = [CLEAN[0], OFFENSIVE[0], CLEAN[1], CLEAN[2], OFFENSIVE[1], OFFENSIVE[2], CLEAN[3]]
    response = await safety.stub.Classify(request(texts))
    assert [r.flagged for r in response.results] == [t in OFFENSIVE for t in texts]
    # Each text scores the same alone as inside the batch.
    for text, result in zip(texts, response.results, strict=True):
        (alone,) = (await safety.stub.Classify(request([text]))).results
        assert harassment(alone).score == pytest.approx(harassment(result).score)


async def test_empty_batch_gives_empty_results(safety) -> None:
    response = await safety.stub.Classify(request([]))
    assert list(response.results) == []
    assert response.model.startswith("profanity-check-")


async def test_thresholds_per_direction(safety_server) -> None:
    # The model scores this around 0.57: between the two thresholds.
    text = "That idea is ridiculous."
    async with safety_server(
        input_thresholds={"harassment": 0.9}, output_thresholds={"harassment": 0.3}
    ) as safety:
        (on_input,) = (await safety.stub.Classify(request([text], INPUT))).results
        (on_output,) = (await safety.stub.Classify(request([text], OUTPUT))).results
    assert 0.3 <= harassment(on_input).score < 0.9
    assert harassment(on_input).score == pytest.approx(harassment(on_output).score)
    assert not on_input.flagged and not harassment(on_input).flagged
    assert on_output.flagged and harassment(on_output).flagged


async def test_global_threshold_setting_replaces_the_default(safety_server) -> None:
    async with safety_server(threshold=0.01) as safety:
        response = await safety.stub.Classify(request([CLEAN[0]]))
    # "What is the capital of France?" scores about 0.03: above 0.01, far below the default.
    assert response.results[0].flagged


async def test_classifier_info_lists_exactly_the_evaluated_categories(safety) -> None:
    info = await safety.stub.GetClassifierInfo(safety_pb2.GetClassifierInfoRequest())
    assert info.model.startswith("profanity-check-")
    assert list(info.evaluated_categories) == ["harassment"]
    response = await safety.stub.Classify(request(CLEAN[:1] + OFFENSIVE[:1]))
    assert response.model == info.model
    for result in response.results:
        assert [c.category for c in result.categories] == list(info.evaluated_categories)


@pytest.mark.parametrize(
    ("overrides", "texts", "direction"),
    [
        pytest.param({"max_texts_per_call": 3}, CLEAN, INPUT, id="too-many-texts"),
        pytest.param({"max_text_chars": 20}, ["short", "x" * 21], INPUT, id="text-too-long"),
        pytest.param({}, CLEAN, safety_pb2.DIRECTION_UNSPECIFIED, id="no-direction"),
    ],
)
async def test_invalid_requests_are_rejected(safety_server, overrides, texts, direction) -> None:
    async with safety_server(**overrides) as safety:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await safety.stub.Classify(request(texts, direction))
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_limits_are_inclusive(safety_server) -> None:
    longest = max(len(text) for text in CLEAN[:3])
    async with safety_server(max_texts_per_call=4, max_text_chars=longest) as safety:
        response = await safety.stub.Classify(request([*CLEAN[:3], "y" * longest]))
    assert len(response.results) == 4


async def test_export_classifier_sends_a_model_that_scores_as_classify(safety_server) -> None:
    """What the gateway's input pre-check copies: the same scores and the input threshold
    Classify applies (the settings' override, here)."""
    texts = CLEAN + OFFENSIVE + ["I hate Mondays.", ""]
    async with safety_server(input_thresholds={"harassment": 0.8}) as safety:
        exported = await safety.stub.ExportClassifier(
            safety_pb2.ExportClassifierRequest(check_texts=texts[:3])
        )
        response = await safety.stub.Classify(request(texts))
        # Check texts keep to the size limits of Classify.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await safety.stub.ExportClassifier(
                safety_pb2.ExportClassifierRequest(check_texts=["x" * 40_000])
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exported.model == response.model
    assert (exported.category, exported.input_threshold) == ("harassment", pytest.approx(0.8))
    scores = linear_text_proto.from_proto(exported.linear).scores(texts)
    for score, result in zip(scores, response.results, strict=True):
        assert score == pytest.approx(harassment(result).score, abs=1e-6)
        assert (score >= exported.input_threshold) == result.flagged
    assert list(exported.check_scores) == pytest.approx(scores[:3], abs=1e-12)


async def test_a_classifier_that_cannot_be_exported_is_failed_precondition() -> None:
    """A backend whose export() is None (MiniLM and Detoxify: networks, not word weights);
    NotLinear is a test double of one (it scores nothing)."""

    class NotLinear(Classifier):
        name = "not-linear"
        evaluated_categories = ("harassment",)
        default_threshold = 0.5

        async def load(self) -> None:
            pass

        def score(self, texts: list[str]) -> list[dict[str, float]]:
            return [{"harassment": 0.0} for _ in texts]

    serving = SafetyServing(
        NotLinear(), Policy(["harassment"], 0.5), max_texts_per_call=8, max_text_chars=100
    )
    with pytest.raises(Unavailable):
        await serving.export()
    await serving.start()
    try:
        with pytest.raises(FailedPrecondition, match="cannot be exported"):
            await serving.export()
    finally:
        await serving.close()
