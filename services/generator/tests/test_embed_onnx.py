"""The transformers embedding engine's ONNX Runtime path (parlance.common.onnx_encoder) against its
PyTorch path: the real all-MiniLM-L6-v2, plain and as the fine-tuned intent model, served side
by side over real gRPC, must give the same vectors; a runtime that cannot apply is refused with
a clear error, and "auto" falls back to PyTorch when the export fails."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import pytest
import pytest_asyncio
from pydantic import ValidationError
from tokenizers import Tokenizer

from parlance.common import onnx_encoder
from parlance.common.onnx_cpu import agreement
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine import transformers_embed
from parlance.generator.engine.base import EncoderNotExported
from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc
from parlance.testing.generator_host import generator_stub

on_module_loop = pytest.mark.asyncio(loop_scope="module")

INTENTS = {"embed_pooling": "layers", "embed_deltas": "minilm_intents_2.npz"}
MODELS = [
    # "onnx", not "auto": a failed export must fail these tests, not fall back to PyTorch.
    {
        "id": "plain-onnx",
        "engine": "transformers",
        "task": "embed",
        "settings": {"embed_runtime": "onnx"},
    },
    {
        "id": "plain-torch",
        "engine": "transformers",
        "task": "embed",
        "settings": {"embed_runtime": "torch"},
    },
    {
        "id": "intents-onnx",
        "engine": "transformers",
        "task": "embed",
        "settings": {**INTENTS, "embed_runtime": "onnx"},
    },
    {
        "id": "intents-torch",
        "engine": "transformers",
        "task": "embed",
        "settings": {**INTENTS, "embed_runtime": "torch"},
    },
    {
        "id": "intents-int8",
        "engine": "transformers",
        "task": "embed",
        "settings": {**INTENTS, "embed_runtime": "onnx-int8"},
    },
]
# One padded batch: lengths from 3 to ~40 tokens, so the mask is exercised.
TEXTS = [
    "hi",
    "how do I reverse a list in python without slicing it",
    "my knee hurts after running, should I rest or keep training through it?",
    "Translate into German: the train leaves at seven, so we will have breakfast at the "
    "station and buy the tickets there if the machine works this time.",
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stub() -> AsyncIterator[generator_pb2_grpc.GeneratorServiceStub]:
    async with generator_stub(MODELS) as served:
        yield served


async def vectors(
    stub: generator_pb2_grpc.GeneratorServiceStub, model: str, texts: list[str]
) -> np.ndarray:
    reply = await stub.Embed(
        pb.EmbedRequest(model=model, inputs=[pb.EmbedInput(text=t) for t in texts])
    )
    return np.array([list(e.values) for e in reply.embeddings])


@on_module_loop
@pytest.mark.parametrize("kind", ["plain", "intents"])
async def test_onnx_serves_pytorchs_vectors(stub, kind: str) -> None:  # type: ignore[no-untyped-def]
    exported = await vectors(stub, f"{kind}-onnx", TEXTS)
    reference = await vectors(stub, f"{kind}-torch", TEXTS)
    assert exported.shape == reference.shape == (len(TEXTS), 384 if kind == "plain" else 2304)
    assert agreement(reference, exported) > 0.99999
    assert np.allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)
    # A text alone and in a padded batch: the same vector.
    alone = await vectors(stub, f"{kind}-onnx", [TEXTS[1]])
    assert agreement(alone, exported[1:2]) > 0.99999


@on_module_loop
async def test_onnx_keeps_the_intent_models_meaning(stub) -> None:  # type: ignore[no-untyped-def]
    texts = ["fix this python error: list index out of range", "why does my code crash", "hi"]
    found = await vectors(stub, "intents-onnx", texts)
    similar, unrelated = found[0] @ found[1], found[0] @ found[2]
    assert similar > unrelated + 0.2


async def export(
    stub: generator_pb2_grpc.GeneratorServiceStub, model: str
) -> tuple[pb.EncoderSpec, bytes]:
    spec, pieces = None, []
    async for chunk in stub.ExportEncoder(pb.ExportEncoderRequest(model=model)):
        if chunk.HasField("spec"):
            spec = chunk.spec
        else:
            pieces.append(chunk.graph)
    assert spec is not None
    return spec, b"".join(pieces)


@on_module_loop
async def test_export_encoder_streams_the_graph_it_serves(stub) -> None:  # type: ignore[no-untyped-def]
    """The gateway's intent router runs the exported graph itself (its test:
    services/gateway/tests/test_intents_local_encoder.py); here the spec and the pieces."""
    spec, graph = await export(stub, "intents-onnx")
    assert spec.model == "intents-onnx"
    assert (spec.dimensions, spec.max_model_len, spec.pad_token_id) == (2304, 256, 0)
    assert (list(spec.prefix), list(spec.suffix)) == ([101], [102])  # [CLS] ... [SEP]
    assert len(graph) == spec.graph_bytes > 4 << 20  # several pieces under the 4 MiB limit
    assert hashlib.sha256(graph).hexdigest() == spec.graph_sha256
    assert '"model"' in spec.tokenizer_json
    # The pieces make the graph that serves Embed: the same vectors from ONNX Runtime here.
    texts = TEXTS[:2]
    tokenizer = Tokenizer.from_str(spec.tokenizer_json)
    rows = [[101, *e.ids, 102] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    mask = (np.arange(width)[None, :] < np.array([len(r) for r in rows])[:, None]).astype(np.int64)
    (local,) = onnxruntime.InferenceSession(graph).run(None, {"ids": ids, "mask": mask})
    assert agreement(await vectors(stub, "intents-onnx", texts), local) > 0.99999


@on_module_loop
async def test_export_encoder_refuses_a_model_pytorch_serves(stub) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await export(stub, "plain-torch")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not served from an exported ONNX graph" in (caught.value.details() or "")


@on_module_loop
async def test_int8_serves_a_quantized_graph_close_to_pytorch(stub) -> None:  # type: ignore[no-untyped-def]
    quantized = await vectors(stub, "intents-int8", TEXTS)
    reference = await vectors(stub, "intents-torch", TEXTS)
    found = agreement(reference, quantized)
    # Really quantized (float32's graph agrees to 1e-7), and still the same model's vectors.
    assert onnx_encoder.MIN_AGREEMENT_INT8 <= found < 0.9999
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-5)
    spec, graph = await export(stub, "intents-int8")
    float32_spec, _ = await export(stub, "intents-onnx")
    assert spec.graph_bytes < float32_spec.graph_bytes / 3  # int8 weights
    assert hashlib.sha256(graph).hexdigest() == spec.graph_sha256


def test_runtime_setting_is_validated() -> None:
    with pytest.raises(ValidationError, match="embed_runtime"):
        GeneratorSettings(embed_runtime="tensorrt")
    assert GeneratorSettings().embed_runtime == "auto"


def test_onnx_refused_where_it_cannot_run() -> None:
    engine = TransformersEmbeddingEngine(served_model_name="bf16", dtype="bfloat16", runtime="onnx")
    with pytest.raises(ValueError, match="float32 on the CPU"):
        engine._load()
    with pytest.raises(ValueError, match="runtime one of"):
        TransformersEmbeddingEngine(served_model_name="x", runtime="tensorrt")


def test_auto_falls_back_to_pytorch_when_the_export_fails(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    def broken_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(transformers_embed, "export_graph", broken_export)
    engine = TransformersEmbeddingEngine(served_model_name="fallback", runtime="auto")
    with caplog.at_level(logging.WARNING):
        engine._load()
    assert engine.runtime == "torch"
    assert "PyTorch serves it" in caplog.text
    assert len(engine._vectors_of(["still served"])[0]) == 384
    strict = TransformersEmbeddingEngine(served_model_name="strict", runtime="onnx")
    with pytest.raises(RuntimeError, match="exporter broke"):
        strict._load()


def test_the_exported_graph_is_read_from_the_cache_or_held(tmp_path: Path) -> None:
    cached = TransformersEmbeddingEngine(
        served_model_name="cached", runtime="onnx", onnx_cache=str(tmp_path)
    )
    cached._load()
    assert cached._graph is None  # not held: the cache folder keeps it
    graph = cached.exported().graph
    assert hashlib.sha256(graph).hexdigest() == cached.exported().graph_sha256
    for file in tmp_path.iterdir():
        file.write_bytes(b"another graph")
    with pytest.raises(EncoderNotExported, match="restart the generator"):
        cached.exported()
    held = TransformersEmbeddingEngine(served_model_name="held", runtime="onnx", onnx_cache="")
    held._load()
    assert held._graph is not None and held.exported().graph is held._graph  # no cache: held


def test_int8_asked_for_fails_the_load_rather_than_falling_back(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken_quantize(graph: bytes) -> bytes:
        raise RuntimeError("quantizer broke")

    monkeypatch.setattr(transformers_embed, "quantize_int8", broken_quantize)
    engine = TransformersEmbeddingEngine(served_model_name="int8", runtime="onnx-int8")
    with pytest.raises(RuntimeError, match="quantizer broke"):
        engine._load()


def test_the_exported_graph_is_cached_and_checked(tmp_path: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    exports = []
    export = transformers_embed.export_graph

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        exports.append(1)
        return export(*args, **kwargs)

    monkeypatch.setattr(transformers_embed, "export_graph", counted)

    def load() -> TransformersEmbeddingEngine:
        engine = TransformersEmbeddingEngine(
            served_model_name="cached", runtime="onnx", onnx_cache=str(tmp_path)
        )
        engine._load()
        return engine

    first = load()
    (graph,) = tmp_path.glob("*.onnx")
    assert len(exports) == 1 and list(tmp_path.glob("*.part")) == []
    second = load()  # from the cache: no export
    assert len(exports) == 1
    assert (
        agreement(np.array(first._vectors_of(TEXTS)), np.array(second._vectors_of(TEXTS))) > 0.99999
    )
    # A damaged graph in the cache is exported again, not served nor fatal.
    graph.write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING):
        third = load()
    assert len(exports) == 2 and third.runtime == "onnx"
    assert "exporting it again" in caplog.text
    assert graph.read_bytes() != b"not a graph"


def test_a_graph_that_does_not_match_pytorch_is_not_served(
    tmp_path: Path, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    def engine(runtime: str) -> TransformersEmbeddingEngine:
        return TransformersEmbeddingEngine(
            served_model_name="mismatch", runtime=runtime, onnx_cache=str(tmp_path)
        )

    # A fresh export that disagrees: refused under "onnx", PyTorch serves under "auto".
    monkeypatch.setattr(transformers_embed, "agreement", lambda *_: 0.5)
    with pytest.raises(ValueError, match="differ from PyTorch's"):
        engine("onnx")._load()
    fallback = engine("auto")
    with caplog.at_level(logging.WARNING):
        fallback._load()
    assert fallback.runtime == "torch" and "PyTorch serves it" in caplog.text
    assert list(tmp_path.glob("*.onnx")) == []  # nothing that disagreed was cached
    # A cached graph that disagrees: exported again; the fresh one serves and replaces it.
    monkeypatch.setattr(transformers_embed, "agreement", agreement)
    engine("onnx")._load()
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    answers = iter([0.5, 1.0])
    monkeypatch.setattr(transformers_embed, "agreement", lambda *_: next(answers))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = engine("onnx")
        again._load()
    assert again.runtime == "onnx" and "did not match PyTorch" in caplog.text
