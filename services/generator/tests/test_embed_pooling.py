"""The transformers embedding engine's dtype and pooling settings, with the real
all-MiniLM-L6-v2 served twice over real gRPC: as shipped (float32, mean pooling) and as the
gateway's intent model (bfloat16, every layer's mean pooled and concatenated)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from pydantic import ValidationError

from parlance.generator.config import GeneratorSettings
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc
from parlance.testing.generator_host import generator_stub

pytestmark = pytest.mark.asyncio(loop_scope="module")

MEAN = "all-MiniLM-L6-v2"
LAYERS = "minilm-intent"
MODELS = [
    {"id": MEAN, "engine": "transformers", "task": "embed"},
    {
        "id": LAYERS,
        "engine": "transformers",
        "task": "embed",
        "settings": {"embed_dtype": "bfloat16", "embed_pooling": "layers"},
    },
]
TEXTS = ["how do I reverse a list in python", "my knee hurts after running", "hello!"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stub() -> AsyncIterator[generator_pb2_grpc.GeneratorServiceStub]:
    async with generator_stub(MODELS) as served:
        yield served


async def vectors(stub: generator_pb2_grpc.GeneratorServiceStub, model: str) -> np.ndarray:
    reply = await stub.Embed(
        pb.EmbedRequest(model=model, inputs=[pb.EmbedInput(text=t) for t in TEXTS])
    )
    return np.array([list(e.values) for e in reply.embeddings])


async def test_layer_pooling_concatenates_every_layer(stub) -> None:  # type: ignore[no-untyped-def]
    listed = {m.id: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert listed[MEAN].dimensions == 384
    assert listed[LAYERS].dimensions == 384 * 6
    mean, layers = await vectors(stub, MEAN), await vectors(stub, LAYERS)
    assert layers.shape == (3, 2304)
    np.testing.assert_allclose(np.linalg.norm(layers, axis=1), 1.0, atol=1e-5)
    # Six blocks of equal weight: each layer's unit vector over sqrt(6).
    blocks = layers.reshape(3, 6, 384)
    np.testing.assert_allclose(np.linalg.norm(blocks, axis=2), 6**-0.5, atol=1e-4)
    # The last block is the shipped vector's direction (bfloat16 moves it by less than 1e-3).
    last = blocks[:, -1] / np.linalg.norm(blocks[:, -1], axis=1, keepdims=True)
    assert np.all(np.sum(last * mean, axis=1) > 0.999)
    # Different messages stay apart in the joined space too.
    similarity = layers @ layers.T
    assert similarity[0, 1] < 0.9 and similarity[0, 2] < 0.9


async def test_unknown_dtype_or_pooling_is_refused() -> None:
    with pytest.raises(ValidationError, match="embed_dtype"):
        GeneratorSettings(embed_dtype="float16")
    with pytest.raises(ValidationError, match="embed_pooling"):
        GeneratorSettings(embed_pooling="cls")


async def test_auto_dtype_takes_bfloat16_only_where_it_is_native() -> None:
    import torch

    from parlance.generator.engine.transformers_embed import (
        TransformersEmbeddingEngine,
        native_bfloat16,
    )

    class CpuChecks:  # stands in for torch.cpu, whose answers are this machine's
        def __init__(self, **answers: bool) -> None:
            for name, answer in answers.items():
                setattr(self, name, lambda answer=answer: answer)

    class Torch:
        def __init__(self, cpu: CpuChecks) -> None:
            self.cpu = cpu

    assert native_bfloat16(Torch(CpuChecks()), "mps")  # another accelerator
    assert not native_bfloat16(Torch(CpuChecks()), "cpu")  # a torch without the checks
    assert not native_bfloat16(Torch(CpuChecks(_is_avx512_bf16_supported=False)), "cpu")
    assert native_bfloat16(Torch(CpuChecks(_is_amx_tile_supported=True)), "cpu")
    # The real engine on this machine: bfloat16 exactly where torch says the CPU has it.
    engine = TransformersEmbeddingEngine(served_model_name="auto", dtype="auto")
    await engine.start()
    try:
        expected = torch.bfloat16 if native_bfloat16(torch, "cpu") else torch.float32
        assert engine.dtype == str(expected).removeprefix("torch.")
    finally:
        await engine.close()
    assert GeneratorSettings(embed_dtype="auto").embed_dtype == "auto"


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_cuda_asks_torch_whether_the_gpu_has_bfloat16_natively(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """T4 and V100 (compute capability 7.x) only emulate bfloat16: float32 there."""
    import contextlib

    import torch

    from parlance.generator.engine.transformers_embed import native_bfloat16

    asked: dict[str, object] = {}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked["including_emulation"] = including_emulation
        return native or including_emulation  # emulation counts unless told otherwise

    def device(which: str) -> contextlib.AbstractContextManager[None]:
        asked["device"] = which
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", device)
    assert native_bfloat16(torch, "cuda:1") is native
    assert asked == {"device": "cuda:1", "including_emulation": False}
