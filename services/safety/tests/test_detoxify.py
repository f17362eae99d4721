"""The Detoxify backend through Detoxify's real loading code and the real gRPC service, on a
small checkpoint in Detoxify's format built at test time (detoxify_checkpoint.py): the marker
word "zorblax" is toxic (insult, identity attack, ...), "grumbix" is a threat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from detoxify_checkpoint import THREAT_MARKER, TOXIC_MARKER, SmallCheckpoint, build_small_checkpoint
from prometheus_client import REGISTRY

from parlance.safety.classifier import build_classifier
from parlance.safety.classifier.detoxify import DetoxifyClassifier
from parlance.safety.config import SafetySettings
from parlance.safety.main import build_host, build_serving
from parlance.safety.serving import SafetyServing
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc

INPUT = safety_pb2.DIRECTION_INPUT
OUTPUT = safety_pb2.DIRECTION_OUTPUT

CLEAN = [
    "hello world",
    "what is the capital of france?",
    "can you help me write a poem about the sea?",
    "the weather is good today",
    "",
]
TOXIC = f"you are {TOXIC_MARKER}"
THREAT = f"i will {THREAT_MARKER} you"
EVALUATED = ["harassment", "harassment/threatening", "hate", "violence"]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> SmallCheckpoint:
    return build_small_checkpoint(tmp_path_factory.mktemp("detoxify"))


@dataclass
class RunningDetoxify:
    serving: SafetyServing
    classifier: DetoxifyClassifier
    stub: safety_pb2_grpc.SafetyServiceStub


def detoxify_settings(checkpoint: SmallCheckpoint, **overrides: Any) -> SafetySettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "shutdown_grace_s": 1.0,
        "classifier": "detoxify",
        "detoxify_model_type": "original",
        "detoxify_checkpoint": str(checkpoint.checkpoint),
        "detoxify_hf_config_path": str(checkpoint.hf_config_dir),
    }
    values.update(overrides)
    return SafetySettings(**values)


@asynccontextmanager
async def running_detoxify(
    checkpoint: SmallCheckpoint, **overrides: Any
) -> AsyncIterator[RunningDetoxify]:
    settings = detoxify_settings(checkpoint, **overrides)
    serving = build_serving(settings)
    assert isinstance(serving.classifier, DetoxifyClassifier)
    host = build_host(settings, serving)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield RunningDetoxify(
            serving, serving.classifier, safety_pb2_grpc.SafetyServiceStub(channel)
        )
    finally:
        await channel.close()
        await host.stop()


@pytest.fixture
async def detox(small_checkpoint: SmallCheckpoint) -> AsyncIterator[RunningDetoxify]:
    async with running_detoxify(small_checkpoint) as running:
        yield running


def request(texts: list[str], direction: int = INPUT) -> safety_pb2.ClassifyRequest:
    return safety_pb2.ClassifyRequest(texts=texts, direction=direction)


def scores(result: safety_pb2.Classification) -> dict[str, float]:
    return {c.category: c.score for c in result.categories}


def windows_counted() -> float:
    return REGISTRY.get_sample_value("parlance_safety_windows_per_text_sum") or 0.0


def flagged(result: safety_pb2.Classification) -> set[str]:
    return {c.category for c in result.categories if c.flagged}


async def test_classifier_info_lists_the_mapped_categories(detox) -> None:
    info = await detox.stub.GetClassifierInfo(safety_pb2.GetClassifierInfoRequest())
    assert info.model == "detoxify-original"
    # original has no sexual_explicit label, and nothing maps to self-harm, illicit, ...
    assert list(info.evaluated_categories) == EVALUATED


async def test_single_texts(detox) -> None:
    (clean,) = (await detox.stub.Classify(request([CLEAN[1]]))).results
    assert not clean.flagged
    assert [c.category for c in clean.categories] == EVALUATED
    assert max(scores(clean).values()) < 0.2

    (toxic,) = (await detox.stub.Classify(request([TOXIC]))).results
    assert toxic.flagged
    assert flagged(toxic) == {"harassment", "hate"}
    assert scores(toxic)["harassment"] > 0.9

    (threat,) = (await detox.stub.Classify(request([THREAT]))).results
    assert flagged(threat) == {"harassment/threatening", "violence"}
    assert scores(threat)["violence"] == scores(threat)["harassment/threatening"]


async def test_batch_scores_match_one_by_one(detox) -> None:
    texts = [CLEAN[0], TOXIC, CLEAN[1], THREAT, CLEAN[2], f"{CLEAN[3]} {TOXIC_MARKER}", CLEAN[4]]
    batch = (await detox.stub.Classify(request(texts))).results
    assert [r.flagged for r in batch] == [False, True, False, True, False, True, False]
    for text, result in zip(texts, batch, strict=True):
        (alone,) = (await detox.stub.Classify(request([text]))).results
        assert scores(alone) == pytest.approx(scores(result), abs=1e-5)
        assert flagged(alone) == flagged(result)
    # The clean texts do not all score alike: padding or batching mistakes would show.
    assert len({round(scores(r)["hate"], 6) for r in batch if not r.flagged}) > 1


async def test_toxic_tail_beyond_512_tokens_is_flagged(detox) -> None:
    tokenizer = detox.classifier._tokenizer
    filler = "the weather is good today and the sea is nice. " * 100
    long_toxic = filler + TOXIC
    tokens = len(tokenizer(long_toxic, verbose=False)["input_ids"])
    assert tokens > 2 * 512
    windows_before = windows_counted()

    response = await detox.stub.Classify(request([filler, long_toxic], OUTPUT))
    clean_long, toxic_long = response.results
    assert not clean_long.flagged
    assert toxic_long.flagged
    assert flagged(toxic_long) == {"harassment", "hate"}
    windows = (
        REGISTRY.get_sample_value("parlance_safety_windows_per_text_sum") or 0
    ) - windows_before
    assert windows >= 6

    # Detoxify's own predict() truncates at 512 tokens and misses the tail: the windows are
    # what catch it.
    import detoxify

    model = detoxify.Detoxify(
        checkpoint=detox.classifier.checkpoint,
        huggingface_config_path=detox.classifier.huggingface_config_path,
    )
    assert model.predict(long_toxic)["toxicity"] < 0.5
    assert model.predict(TOXIC)["toxicity"] > 0.9


async def test_concurrent_calls_share_forward_passes(small_checkpoint) -> None:
    texts = [CLEAN[i % 4] if i % 3 else f"{CLEAN[i % 4]} {TOXIC_MARKER}" for i in range(32)]
    texts[5] = THREAT
    # A generous wait so that all 32 calls gather even on a slow machine; the default is ms.
    async with running_detoxify(small_checkpoint, max_wait_ms=200, max_batch_size=32) as detox:
        one_by_one = []
        for text in texts:
            (result,) = (await detox.stub.Classify(request([text]))).results
            one_by_one.append(result)
        passes_before = detox.classifier.forward_passes
        batches_before = detox.serving.batcher.batches
        metric_before = REGISTRY.get_sample_value("parlance_safety_forward_passes_total") or 0.0

        concurrent = await asyncio.gather(*(detox.stub.Classify(request([text])) for text in texts))

        passes = detox.classifier.forward_passes - passes_before
        batches = detox.serving.batcher.batches - batches_before
        metric = (REGISTRY.get_sample_value("parlance_safety_forward_passes_total") or 0) - (
            metric_before
        )
    assert 1 <= passes < len(texts)
    assert 1 <= batches < len(texts)
    assert metric == passes
    for alone, response in zip(one_by_one, concurrent, strict=True):
        (together,) = response.results
        assert scores(together) == pytest.approx(scores(alone), abs=1e-5)
        assert together.flagged == alone.flagged
    assert sum(r.results[0].flagged for r in concurrent) == 1 + sum(
        TOXIC_MARKER in t for t in texts
    )


async def test_forward_passes_hold_at_most_max_batch_size_windows(small_checkpoint) -> None:
    async with running_detoxify(small_checkpoint, max_batch_size=4) as detox:
        before = detox.classifier.forward_passes
        response = await detox.stub.Classify(request(CLEAN * 2))
        assert len(response.results) == 10
        # One call of 10 texts is one model call, split into forward passes of <= 4 windows.
        assert detox.classifier.forward_passes - before == 3


async def test_thresholds_per_direction(small_checkpoint) -> None:
    async with running_detoxify(
        small_checkpoint,
        input_thresholds={"harassment/threatening": 1.01, "violence": 1.01},
        output_thresholds={"violence": 0.3},
    ) as detox:
        (on_input,) = (await detox.stub.Classify(request([THREAT], INPUT))).results
        (on_output,) = (await detox.stub.Classify(request([THREAT], OUTPUT))).results
    assert scores(on_input) == pytest.approx(scores(on_output))
    assert not on_input.flagged
    # harassment/threatening keeps the default 0.5 on output.
    assert flagged(on_output) == {"harassment/threatening", "violence"}


async def test_global_threshold(small_checkpoint) -> None:
    async with running_detoxify(small_checkpoint, threshold=0.02) as detox:
        (result,) = (await detox.stub.Classify(request([CLEAN[0]]))).results
    # Clean text scores a few hundredths: above 0.02, far below the default 0.5.
    assert result.flagged


async def test_model_type_must_match_the_checkpoint(small_checkpoint) -> None:
    # "unbiased" has a sexual_explicit label that this (original-format) checkpoint lacks.
    settings = detoxify_settings(small_checkpoint, detoxify_model_type="unbiased")
    classifier = build_classifier(settings)
    with pytest.raises(ValueError, match="sexual_explicit"):
        await classifier.load()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFETY_CLASSIFIER", "detoxify")
    monkeypatch.setenv("SAFETY_DETOXIFY_MODEL_TYPE", "unbiased-small")
    monkeypatch.setenv("SAFETY_DETOXIFY_CHECKPOINT", "/models/unbiased-albert.ckpt")
    monkeypatch.setenv("SAFETY_DETOXIFY_HF_CONFIG_PATH", "/models/albert-base-v2")
    monkeypatch.setenv("SAFETY_DEVICE", "cuda:0")
    monkeypatch.setenv("SAFETY_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SAFETY_MAX_WAIT_MS", "5")
    settings = SafetySettings()
    assert (settings.max_batch_size, settings.max_wait_ms) == (16, 5.0)
    classifier = build_classifier(settings)
    assert isinstance(classifier, DetoxifyClassifier)
    assert classifier.name == "detoxify-unbiased-small"
    assert classifier.checkpoint == "/models/unbiased-albert.ckpt"
    assert classifier.huggingface_config_path == "/models/albert-base-v2"
    assert (classifier.device, classifier.max_batch_size) == ("cuda:0", 16)
    assert classifier.evaluated_categories == (*EVALUATED[:3], "sexual", "violence")


def test_unknown_model_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown Detoxify model type"):
        DetoxifyClassifier("toxic-bert-xl")
