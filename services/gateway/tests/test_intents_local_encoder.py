"""The intent router's encoder run in the gateway (intents/local_encoder.py): a real generator
(gRPC on port 0) serving the fine-tuned intent model from ONNX Runtime and the plain model
from PyTorch; the gateway fetches the first one's graph, checks it against the generator's
Embed and embeds with it; anything else leaves the generator embedding, never a failed
classification."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from parlance.gateway.errors import APIError
from parlance.gateway.intents import GeneratorEmbedder
from parlance.gateway.intents.local_encoder import LocalEncoder, LocalFirstEmbedder
from parlance.testing.generator_host import ServedGenerator, gateway_generator

pytestmark = pytest.mark.asyncio(loop_scope="module")

ONNX = "intents-onnx"
TORCH = "plain-torch"
MODELS = [
    {
        "id": ONNX,
        "engine": "transformers",
        "task": "embed",
        "settings": {
            "embed_pooling": "layers",
            "embed_deltas": "minilm_intents_2.npz",
            "embed_runtime": "onnx",
        },
    },
    {
        "id": TORCH,
        "engine": "transformers",
        "task": "embed",
        "settings": {"embed_runtime": "torch"},
    },
]
TEXTS = [
    "hi",
    "my react component re-renders forever",
    "wie sagt man 'Erdnussallergie' auf Thai?",
    "refund for the pro plan please, I was charged twice this month " * 30,  # cut at 256
]


Generator = ServedGenerator


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def generator() -> AsyncIterator[Generator]:
    async with gateway_generator(MODELS) as served:
        yield served


def embedder(generator: Generator, model: str) -> LocalFirstEmbedder:
    remote = GeneratorEmbedder(generator.client, generator.registry.resolve, model)
    return LocalFirstEmbedder(remote, generator.client, n_threads=1)


def local_gauge() -> float | None:
    return REGISTRY.get_sample_value("parlance_gateway_intent_encoder_local")


async def test_the_gateway_embeds_with_the_generators_graph(generator: Generator) -> None:
    calls = 0
    real_embed = generator.client.embed

    async def counted(request):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await real_embed(request)

    found = embedder(generator, ONNX)
    assert await found.start()
    assert found.local is not None and local_gauge() == 1.0
    reference = np.asarray(await found.remote.embed(TEXTS))
    generator.client.embed = counted  # type: ignore[method-assign]
    try:
        local = np.asarray(await found.embed(TEXTS))
        # Concurrent messages share forward passes and make the same vectors alone.
        assert found.local is not None
        before = found.local._batcher.batches
        # Messages that arrive while a pass runs (a long call here) share the next one.
        busy = asyncio.ensure_future(found.embed([TEXTS[3]] * 16))
        await asyncio.sleep(0)
        alone = await asyncio.gather(*(found.embed([t]) for t in TEXTS))
        await busy
        batches = found.local._batcher.batches - before
    finally:
        generator.client.embed = real_embed  # type: ignore[method-assign]
        await found.close()
    assert calls == 0  # no Embed call once the copy runs
    assert batches <= 3  # 5 calls: alone they would be 5 batches
    assert local.shape == (len(TEXTS), 2304)
    assert float((reference * local).sum(axis=1).min()) > 0.99999
    assert np.allclose(np.concatenate([np.asarray(a) for a in alone]), local, atol=1e-5)


async def test_a_model_pytorch_serves_stays_with_the_generator(
    generator: Generator, caplog: pytest.LogCaptureFixture
) -> None:
    found = embedder(generator, TORCH)
    with caplog.at_level(logging.WARNING, logger="parlance.gateway.intents.local_encoder"):
        assert not await found.start()
    assert found.local is None and local_gauge() == 0.0
    (record,) = [r for r in caplog.records if "not run in the gateway" in r.getMessage()]
    assert "not served from an exported ONNX graph" in record.__dict__["reason"]
    vectors = await found.embed(TEXTS[:2])  # the generator's
    assert np.asarray(vectors).shape == (2, 384)


async def test_a_copy_that_disagrees_is_not_used(
    generator: Generator, caplog: pytest.LogCaptureFixture
) -> None:
    real_export = generator.client.export_encoder

    async def without_cls(request):  # type: ignore[no-untyped-def]
        spec, graph = await real_export(request)
        del spec.prefix[:]  # the copy would embed without [CLS]
        return spec, graph

    found = embedder(generator, ONNX)
    generator.client.export_encoder = without_cls  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="parlance.gateway.intents.local_encoder"):
            assert not await found.start()
    finally:
        generator.client.export_encoder = real_export  # type: ignore[method-assign]
    assert found.local is None
    assert any(
        "differ from the generator's" in r.__dict__.get("reason", "") for r in caplog.records
    )


async def test_a_damaged_graph_is_refused(generator: Generator) -> None:
    from parlance.generator.v1 import generator_pb2

    spec, graph = await generator.client.export_encoder(
        generator_pb2.ExportEncoderRequest(model=ONNX)
    )
    damaged = bytearray(graph)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="arrived damaged"):
        LocalEncoder(spec, bytes(damaged), n_threads=1)


async def test_a_failing_copy_hands_the_message_to_the_generator(
    generator: Generator, caplog: pytest.LogCaptureFixture
) -> None:
    found = embedder(generator, ONNX)
    assert await found.start()
    assert found.local is not None

    async def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("onnxruntime failed")

    found.local.embed = broken  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="parlance.gateway.intents.local_encoder"):
            vectors = await found.embed(TEXTS[:1])
        assert np.asarray(vectors).shape == (1, 2304)
        assert any("the generator embeds" in r.getMessage() for r in caplog.records)
        assert found.local is not None  # one failure: kept
        for _ in range(found.MAX_FAILURES - 1):
            await found.embed(TEXTS[:1])
        assert found.local is None and local_gauge() == 0.0  # dropped after repeated failures
    finally:
        await found.close()


async def test_a_failure_that_may_pass_is_tried_again_in_the_background(
    generator: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = generator.client.export_encoder
    calls = 0

    async def busy_once(request):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise APIError(503, "The generator service is unavailable; retry later.")
        return await real_export(request)

    found = embedder(generator, ONNX)
    monkeypatch.setattr(found, "RETRY_PAUSES_S", (0.01,))
    generator.client.export_encoder = busy_once  # type: ignore[method-assign]
    try:
        assert await found.start_in_background() is True
        assert calls == 2 and found.local is not None
    finally:
        generator.client.export_encoder = real_export  # type: ignore[method-assign]
        await found.close()
    assert found.local is None and local_gauge() == 0.0


async def test_close_stops_a_start_still_under_way(generator: Generator) -> None:
    gate = asyncio.Event()
    real_export = generator.client.export_encoder

    async def slow(request):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await real_export(request)

    found = embedder(generator, ONNX)
    generator.client.export_encoder = slow  # type: ignore[method-assign]
    try:
        task = found.start_in_background()
        await asyncio.sleep(0.05)
        await found.close()
        assert task.cancelled() and found.local is None
    finally:
        generator.client.export_encoder = real_export  # type: ignore[method-assign]
