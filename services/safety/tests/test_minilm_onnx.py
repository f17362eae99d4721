"""The MiniLM classifier's encoder served by ONNX Runtime (classifier/minilm_onnx.py) against
the PyTorch path, with the real weights and head 7: the same scores, the cache folder of
exported graphs (used on restart, a damaged graph exported again), and what happens when the
graph cannot be had (runtime "auto": PyTorch serves; "onnx": the load fails)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from parlance.safety.classifier import minilm, minilm_onnx
from parlance.safety.classifier.minilm import MiniLMClassifier
from parlance.safety.config import SafetySettings

TEXTS = [
    "You are a pathetic, useless idiot and everyone hates you.",
    "I am going to break your neck when I find you tonight.",
    "I want to kill myself tonight.",
    "How do I kill -9 a process that ignores SIGTERM?",
    "What is the capital of France?",
    "hi",
    # A long text: many sentences, one of them a sentence of two token windows.
    "The committee met on Tuesday. " * 6 + " ".join(["they argued about the shelves"] * 40),
]


def load(**kwargs: object) -> MiniLMClassifier:
    classifier = MiniLMClassifier(threads=1, **kwargs)  # type: ignore[arg-type]
    asyncio.run(classifier.load())
    return classifier


@pytest.fixture(scope="module")
def torch_scores() -> Iterator[list[dict[str, float]]]:
    classifier = load(runtime="torch")
    assert classifier.encoder is not None and classifier.encoder.runtime == "torch"
    yield classifier.score(TEXTS)


def largest_difference(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    return max(abs(x[c] - y[c]) for x, y in zip(a, b, strict=True) for c in x)


def test_onnx_runtime_scores_as_pytorch_does_and_caches_its_graph(
    torch_scores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classifier = load(runtime="onnx", onnx_cache=str(tmp_path))
    assert classifier.encoder is not None and classifier.encoder.runtime == "onnx"
    assert largest_difference(classifier.score(TEXTS), torch_scores) < 1e-4
    # Scored by the model: the harmful texts flag, the others do not (not all zeros).
    flagged = [max(row.values()) >= 0.5 for row in classifier.score(TEXTS)]
    assert flagged == [True, True, True, False, False, False, False]

    # A restart takes the cached graph (exporting again would fail here).
    (graph,) = tmp_path.glob("*.onnx")
    good = graph.read_bytes()

    def no_export(*args: object) -> bytes:
        raise AssertionError("exported again although a matching graph was cached")

    with monkeypatch.context() as patched:
        patched.setattr(minilm_onnx, "export_graph", no_export)
        again = load(runtime="onnx", onnx_cache=str(tmp_path))
    assert again.encoder is not None and again.encoder.runtime == "onnx"
    assert largest_difference(again.score(TEXTS), torch_scores) < 1e-4

    # A damaged cached graph (half a file) is exported again and replaced.
    graph.write_bytes(good[: len(good) // 2])
    mended = load(runtime="onnx", onnx_cache=str(tmp_path))
    assert mended.encoder is not None and mended.encoder.runtime == "onnx"
    assert largest_difference(mended.score(TEXTS), torch_scores) < 1e-4
    assert graph.read_bytes() == good


def test_auto_is_the_settings_default() -> None:
    assert SafetySettings().minilm_runtime == "auto"
    with pytest.raises(ValueError):
        SafetySettings(minilm_runtime="tensorrt")


def test_a_graph_that_disagrees_is_not_served(
    torch_scores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A graph whose vectors are not PyTorch's (here the check is made to see one): "auto"
    keeps PyTorch serving, with a warning; "onnx" fails the load, so the service stays
    NOT_SERVING (test_minilm.py shows a failed load does that)."""
    monkeypatch.setattr(minilm_onnx, "agreement", lambda a, b: 0.5)
    with caplog.at_level(logging.WARNING):
        auto = load(runtime="auto", onnx_cache=str(tmp_path))
    assert auto.encoder is not None and auto.encoder.runtime == "torch"
    assert "PyTorch serves it" in caplog.text
    assert largest_difference(auto.score(TEXTS), torch_scores) < 1e-6
    assert not list(tmp_path.glob("*.onnx"))  # a graph that did not match is not cached
    with pytest.raises(ValueError, match="differ from PyTorch's"):
        load(runtime="onnx", onnx_cache=str(tmp_path))


def test_without_onnx_runtime_auto_serves_pytorch_and_onnx_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(minilm, "onnx_runtime_available", lambda: False)
    auto = load(runtime="auto", onnx_cache="")
    assert auto.encoder is not None and auto.encoder.runtime == "torch"
    with pytest.raises(ValueError, match="onnxruntime packages are not installed"):
        load(runtime="onnx", onnx_cache="")
