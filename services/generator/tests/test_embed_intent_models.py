"""The later intent encoders, all-MiniLM-L6-v2-intents-2, -intents-3 and -intents-4
(minilm_intents_2.npz, minilm_intents_3.npz, minilm_intents_4.npz), each served as
services/generator/MODELS.md lists it, beside the one before it, by a real generator over real
gRPC: the vectors it serves are the ones its file stores, they are not the previous encoder's,
and a damaged file is refused before anything is served."""

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

FILES = {
    "all-MiniLM-L6-v2-intents-1": "minilm_intents_1.npz",
    "all-MiniLM-L6-v2-intents-2": "minilm_intents_2.npz",
    "all-MiniLM-L6-v2-intents-3": "minilm_intents_3.npz",
    "all-MiniLM-L6-v2-intents-4": "minilm_intents_4.npz",
}
# (encoder, the one before it, its training messages: None where the file does not say)
LATER = [
    ("all-MiniLM-L6-v2-intents-2", "all-MiniLM-L6-v2-intents-1", None),
    ("all-MiniLM-L6-v2-intents-3", "all-MiniLM-L6-v2-intents-2", 2096),
    ("all-MiniLM-L6-v2-intents-4", "all-MiniLM-L6-v2-intents-3", 2458),
]
# The model entries as MODELS.md gives them (scripts/devstack.py serves intents-3 in float32).
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


@pytest.mark.parametrize(("name", "before", "training_texts"), LATER)
async def test_the_file_is_shipped_and_names_itself(
    name: str, before: str, training_texts: int | None
) -> None:
    path = resolve_deltas_path(FILES[name])
    assert path.is_file() and path.parent.name == "engine"
    found = load_deltas(path)
    assert found.name == name and found.pooling == "layers"
    assert len(found.deltas) == 36 and {d.a.shape[0] for d in found.deltas} == {8}
    with np.load(path, allow_pickle=False) as data:
        # intents-1's 37 intents and the one the second round added (the third and fourth
        # added none).
        assert len(data["intents"]) == 38 and "consumer_services" in data["intents"]
        if training_texts is not None:
            assert int(data["training_texts"]) == training_texts


@pytest.mark.parametrize(("name", "before", "training_texts"), LATER)
async def test_it_serves_the_vectors_its_file_stores(
    stub: generator_pb2_grpc.GeneratorServiceStub,
    name: str,
    before: str,
    training_texts: int | None,
) -> None:
    listed = {m.id: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert listed[name].dimensions == 2304
    mine = load_deltas(resolve_deltas_path(FILES[name]))
    vectors = await served(stub, name, mine.check_texts)
    assert np.min(np.sum(vectors * mine.check_vectors, axis=1)) > 0.9999
    check_vectors(mine, vectors)  # passes
    # Another encoder: the previous one's file refuses these vectors, and it serves its own.
    previous = load_deltas(resolve_deltas_path(FILES[before]))
    assert previous.check_texts == mine.check_texts
    with pytest.raises(ValueError, match="do not fit this model, or the file is damaged"):
        check_vectors(previous, vectors)
    check_vectors(previous, await served(stub, before, previous.check_texts))


@pytest.mark.parametrize("name", [name for name, _, _ in LATER])
async def test_a_damaged_file_is_refused(tmp_path: Path, name: str) -> None:
    source = resolve_deltas_path(FILES[name])
    # Bytes inside one delta's stored data flipped: the zip's CRC check fails on reading.
    damaged = with_member_bytes_flipped(source, "lora_a_17.npy", tmp_path / "damaged.npz")
    with pytest.raises(ValueError, match="not a deltas file"):
        load_deltas(damaged)
    engine = TransformersEmbeddingEngine(
        served_model_name="damaged", pooling="layers", deltas=str(damaged)
    )
    with pytest.raises(ValueError, match="not a deltas file"):
        await engine.start()
