"""The third intent encoder, all-MiniLM-L6-v2-intents-3 (minilm_intents_3.npz), served as
services/generator/MODELS.md lists it, beside intents-2, by a real generator over real gRPC:
the vectors it serves are the ones its file stores, they are not intents-2's, and a damaged
file is refused before anything is served (as test_embed_intents_2.py checks intents-2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from parlance.generator.engine.deltas import check_vectors, load_deltas, resolve_deltas_path
from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc
from parlance.testing.damaged_files import with_member_bytes_flipped
from parlance.testing.generator_host import generator_stub

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECOND, THIRD = "all-MiniLM-L6-v2-intents-2", "all-MiniLM-L6-v2-intents-3"
FILES = {SECOND: "minilm_intents_2.npz", THIRD: "minilm_intents_3.npz"}
# The model entries as MODELS.md gives them.
MODELS = [
    {
        "id": name,
        "engine": "transformers",
        "task": "embed",
        "settings": {
            "embed_deltas": file,
            "embed_pooling": "layers",
            "embed_dtype": "auto",
            "embed_max_wait_ms": 0,
        },
    }
    for name, file in FILES.items()
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stub() -> AsyncIterator[generator_pb2_grpc.GeneratorServiceStub]:
    async with generator_stub(MODELS) as running:
        yield running


async def served(
    stub: generator_pb2_grpc.GeneratorServiceStub, model: str, texts: tuple[str, ...]
) -> np.ndarray:
    reply = await stub.Embed(
        pb.EmbedRequest(model=model, inputs=[pb.EmbedInput(text=t) for t in texts])
    )
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)


async def test_the_file_is_shipped_and_names_itself() -> None:
    path = resolve_deltas_path(FILES[THIRD])
    assert path.is_file() and path.parent.name == "engine"
    found = load_deltas(path)
    assert found.name == THIRD and found.pooling == "layers"
    assert len(found.deltas) == 36 and {d.a.shape[0] for d in found.deltas} == {8}
    with np.load(path, allow_pickle=False) as data:
        # intents-2's 38 intents (the third round added messages, no intent).
        assert len(data["intents"]) == 38 and "consumer_services" in data["intents"]
        assert int(data["training_texts"]) == 2096


async def test_it_serves_the_vectors_its_file_stores(
    stub: generator_pb2_grpc.GeneratorServiceStub,
) -> None:
    listed = {m.id: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert listed[THIRD].dimensions == 2304
    third = load_deltas(resolve_deltas_path(FILES[THIRD]))
    vectors = await served(stub, THIRD, third.check_texts)
    assert np.min(np.sum(vectors * third.check_vectors, axis=1)) > 0.9999
    check_vectors(third, vectors)  # passes
    # Another encoder: intents-2's file refuses these vectors, and intents-2 serves its own.
    second = load_deltas(resolve_deltas_path(FILES[SECOND]))
    assert second.check_texts == third.check_texts
    with pytest.raises(ValueError, match="do not fit this model, or the file is damaged"):
        check_vectors(second, vectors)
    check_vectors(second, await served(stub, SECOND, second.check_texts))


async def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    source = resolve_deltas_path(FILES[THIRD])
    # Bytes inside one delta's stored data flipped: the zip's CRC check fails on reading.
    damaged = with_member_bytes_flipped(source, "lora_a_17.npy", tmp_path / "damaged.npz")
    with pytest.raises(ValueError, match="not a deltas file"):
        load_deltas(damaged)
    engine = TransformersEmbeddingEngine(
        served_model_name="damaged", pooling="layers", deltas=str(damaged)
    )
    with pytest.raises(ValueError, match="not a deltas file"):
        await engine.start()
