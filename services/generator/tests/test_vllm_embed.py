"""VllmEmbeddingEngine (vLLM's pooling runner) without a GPU.

vLLM cannot run on these machines, so `vllm` is replaced by a test double (FakeVllm below)
that records what the engine hands it and pools like a real model would not: the point is
what the engine does around vLLM. With the real all-MiniLM-L6-v2 tokenizer it must cut and
count inputs exactly as the CPU engine does, send vLLM token ids (never text), return unit
vectors, refuse what the CPU engine refuses, and refuse a model vLLM cannot embed. The real
engine is run on the GPU machine by bench/vllm_embed_vs_parlance.sh.
"""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import torch

from parlance.common.errors import InvalidArgument
from parlance.common.tokens import special_tokens
from parlance.generator.engine.base import EmbeddingRequest
from parlance.generator.engine.embed_inputs import encode_inputs
from parlance.generator.engine.transformers_embed import default_model_path
from parlance.generator.engine.vllm_embed import VllmEmbeddingEngine


class FakeVllm:
    """Test double of the few vLLM names the engine uses."""

    def __init__(self, tasks: tuple[str, ...] = ("embed",)) -> None:
        from transformers import AutoTokenizer

        self.tasks = tasks
        self.tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
        self.model_config = types.SimpleNamespace(max_model_len=256)
        self.prompts: list[list[int]] = []
        self.shut_down = False

    # AsyncLLM
    async def get_supported_tasks(self) -> tuple[str, ...]:
        return self.tasks

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def encode(
        self, prompt: dict[str, Any], params: Any, request_id: str
    ) -> AsyncIterator[Any]:
        assert params.task == "embed" and params.verified
        ids = prompt["prompt_token_ids"]
        self.prompts.append(ids)
        # Not unit length, so that the engine's normalization is seen.
        data = torch.tensor([float(len(ids)), float(sum(ids) % 97), 3.0])
        yield types.SimpleNamespace(outputs=types.SimpleNamespace(data=data), finished=True)

    def shutdown(self) -> None:
        self.shut_down = True

    def modules(self) -> dict[str, types.ModuleType]:
        fake = self

        class PoolingParams:
            def __init__(self, task: str) -> None:
                self.task, self.verified = task, False

            def verify(self, model_config: Any) -> None:
                assert model_config is fake.model_config
                self.verified = True

        class AsyncLLM:
            @staticmethod
            def from_engine_args(args: Any) -> FakeVllm:
                assert args.kwargs["runner"] == "pooling"
                return fake

        def module(name: str, **names: Any) -> types.ModuleType:
            mod = types.ModuleType(name)
            mod.__dict__.update(names)
            return mod

        return {
            "vllm": module("vllm"),
            "vllm.inputs": module(
                "vllm.inputs", tokens_input=lambda ids: {"prompt_token_ids": ids}
            ),
            "vllm.pooling_params": module("vllm.pooling_params", PoolingParams=PoolingParams),
            "vllm.engine.arg_utils": module(
                "vllm.engine.arg_utils",
                AsyncEngineArgs=lambda **kwargs: types.SimpleNamespace(kwargs=kwargs),
            ),
            "vllm.v1.engine.async_llm": module("vllm.v1.engine.async_llm", AsyncLLM=AsyncLLM),
            "vllm.v1.engine.exceptions": module(
                "vllm.v1.engine.exceptions",
                EngineDeadError=type("EngineDeadError", (Exception,), {}),
            ),
        }


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVllm]:
    fake = FakeVllm()
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    yield fake


def engine() -> VllmEmbeddingEngine:
    return VllmEmbeddingEngine(
        served_model_name="minilm-gpu", engine_kwargs={"model": "/models/minilm"}, max_inputs=4
    )


async def test_inputs_are_cut_and_counted_as_on_the_cpu_engine(fake_vllm: FakeVllm) -> None:
    vllm_engine = engine()
    await vllm_engine.start()
    assert vllm_engine.model_info().dimensions == 3
    assert vllm_engine.model_info().max_model_len == 256
    long_text = "word " * 400
    inputs = ("a short sentence", long_text, (101, 2023, 102))
    result = await vllm_engine.embed(EmbeddingRequest("r1", inputs, truncate=True))

    expected = encode_inputs(
        fake_vllm.tokenizer,
        inputs,
        specials=special_tokens(fake_vllm.tokenizer),
        max_len=256,
        vocab_size=len(fake_vllm.tokenizer),
        truncate=True,
        model="minilm-gpu",
    )
    # The probe at start-up, then one vLLM request per input, as token ids.
    assert fake_vllm.prompts[1:] == expected
    assert result.token_counts == [len(ids) for ids in expected]
    assert result.token_counts[1] == 256
    for vector in result.vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-6
    await vllm_engine.close()
    assert fake_vllm.shut_down


async def test_refuses_what_the_cpu_engine_refuses(fake_vllm: FakeVllm) -> None:
    vllm_engine = engine()
    await vllm_engine.start()
    with pytest.raises(InvalidArgument, match="at most 256"):
        await vllm_engine.embed(EmbeddingRequest("r2", ("word " * 400,)))
    with pytest.raises(InvalidArgument, match="cannot shorten"):
        await vllm_engine.embed(EmbeddingRequest("r3", ("hello",), dimensions=2))
    with pytest.raises(InvalidArgument, match="limit is 4"):
        await vllm_engine.embed(EmbeddingRequest("r4", ("x",) * 5))
    with pytest.raises(InvalidArgument, match="outside the model's vocabulary"):
        await vllm_engine.embed(EmbeddingRequest("r5", ((10**9,),)))


async def test_a_model_vllm_cannot_embed_is_refused_at_start(fake_vllm: FakeVllm) -> None:
    fake_vllm.tasks = ("generate",)
    with pytest.raises(ValueError, match="does not serve '/models/minilm' as an embedding"):
        await engine().start()
    assert fake_vllm.shut_down
