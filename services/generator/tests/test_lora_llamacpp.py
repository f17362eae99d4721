"""LoRA adapters as models of the llama.cpp engine, over real gRPC with the real SmolLM2 GGUF.

The adapter is real in form, random in content: a PEFT LoRA (PEFT's own get_peft_model and
save_pretrained, all linear layers, rank 8) whose A and B matrices are random and nonzero,
over a model of SmolLM2-135M-Instruct's shapes, converted by llama.cpp's convert_lora_to_gguf.py
(parlance-train's converter, parlance.trainer.gguf_lora). Its greedy answers differ from the
base's; the base's must not change after or beside adapter requests. Wrong adapters (another
base's shapes or architecture, truncated or not GGUF at all) are written with the `gguf`
package, the library llama.cpp's converter writes with.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from parlance.common.grpc_server import GrpcServiceHost
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.llamacpp import LlamaCppEngine, default_model_path
from parlance.generator.engine.lora import sha256_file
from parlance.generator.main import create_host
from parlance.generator.serving import GeneratorServing
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

BASE = "SmolLM2-135M-Instruct"
ADAPTER = "smol-random@0a1b2c3d"
PROMPTS = ("What is the capital of France?", "Name three colours.")
GREEDY = {"max_tokens": 12, "temperature": 0.0}

# SmolLM2-135M-Instruct's shapes (its config.json): the adapter must fit them.
SMOL = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def write_peft_adapter(out: Path, base_dir: Path, shapes: dict[str, object], seed: int) -> None:
    """A PEFT LoRA folder with random nonzero A and B, and the base's config.json (all the GGUF
    converter reads of a base). The base weights are never initialized: only shapes matter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_utils import no_init_weights

    config = LlamaConfig(**shapes, architectures=["LlamaForCausalLM"])
    with no_init_weights():
        model = LlamaForCausalLM(config)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    peft = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    config.save_pretrained(base_dir)
    peft.save_pretrained(out)


def write_gguf_lora(path: Path, arch: str, tensors: dict[str, tuple[int, int]]) -> None:
    """A GGUF LoRA header and data as llama.cpp's converter writes them; `tensors` maps a base
    tensor name to its (in, out) shape (GGUF order: ne[0] is the row length)."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 16.0)
    for name, (fan_in, fan_out) in tensors.items():
        writer.add_tensor(f"{name}.lora_a", np.full((8, fan_in), 0.01, dtype=np.float32))
        writer.add_tensor(f"{name}.lora_b", np.full((fan_out, 8), 0.01, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GENERATOR_LOAD_ROOT with a real adapter folder (PEFT folder + GGUF LoRA, as
    parlance-train writes one) and broken ones, made once for the module."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from parlance.trainer.gguf_lora import convert

    root = tmp_path_factory.mktemp("load-root")
    good = root / ADAPTER
    write_peft_adapter(good / "peft", root / "base-config", SMOL, seed=1)
    convert(good / "peft", root / "base-config", good / "adapter.gguf")
    # parlance-train's manifest names the GGUF the adapter was trained against.
    served = default_model_path()
    assert served is not None
    base_digest = {"gguf_digest": "sha256:" + sha256_file(served)}
    (good / "manifest.json").write_text(json.dumps({"base": base_digest}))
    (root / "other-base").mkdir()
    shutil.copy(good / "adapter.gguf", root / "other-base")
    other_base = {"gguf_digest": "sha256:" + "0" * 64}
    (root / "other-base" / "manifest.json").write_text(json.dumps({"base": other_base}))
    # The same adapter with other weights (a few bytes of its tensor data changed).
    other = root / "other-weights"
    other.mkdir()
    data = bytearray((good / "adapter.gguf").read_bytes())
    data[-64:] = bytes(64)
    (other / "adapter.gguf").write_bytes(bytes(data))
    # Wrong ones.
    (root / "wide").mkdir()
    write_gguf_lora(root / "wide" / "a.gguf", "llama", {"blk.0.attn_q.weight": (960, 960)})
    (root / "qwen").mkdir()
    write_gguf_lora(root / "qwen" / "a.gguf", "qwen2", {"blk.0.attn_q.weight": (576, 576)})
    (root / "deep").mkdir()
    write_gguf_lora(root / "deep" / "a.gguf", "llama", {"blk.40.attn_q.weight": (576, 576)})
    (root / "truncated").mkdir()
    (root / "truncated" / "a.gguf").write_bytes(bytes(data[: len(data) // 2]))
    (root / "garbage").mkdir()
    (root / "garbage" / "a.gguf").write_bytes(b"not a gguf file at all" * 10)
    (root / "empty").mkdir()
    (root / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(good / "adapter.gguf", root / "two" / name)
    return root


@dataclass
class Running:
    host: GrpcServiceHost
    serving: GeneratorServing
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def llama(root: Path) -> AsyncIterator[Running]:
    """The real SmolLM2 GGUF, two contexts (requests side by side in two threads)."""
    settings = GeneratorSettings(
        port=0,
        metrics_port=-1,
        shutdown_grace_s=1.0,
        engine="llamacpp",
        pool_size=2,
        n_threads=1,
        n_ctx=512,
        load_root=str(root),
    )
    host, serving = create_host(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    yield Running(host, serving, channel, generator_pb2_grpc.GeneratorServiceStub(channel))
    await channel.close()
    await host.stop()


def generate_request(text: str, model: str = "", **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=text)]),
        sampling=pb.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def answer(llama: Running, text: str, model: str = "") -> str:
    responses = [r async for r in llama.stub.Generate(generate_request(text, model, **GREEDY))]
    assert all(r.model == (model or BASE) for r in responses)
    return "".join(d.text for r in responses for d in r.choices)


async def load(
    llama: Running, path: Path, model_id: str = ADAPTER, parent: str = BASE
) -> pb.ModelInfo:
    request = pb.LoadModelRequest(
        id=model_id, task=pb.MODEL_TASK_CHAT, path=str(path), parent=parent
    )
    return (await llama.stub.LoadModel(request)).model


def engine_of(llama: Running) -> LlamaCppEngine:
    engine = llama.serving.models[BASE]
    assert isinstance(engine, LlamaCppEngine)
    return engine


async def test_adapter_is_served_as_its_own_model(llama: Running, root: Path) -> None:
    base_before = [await answer(llama, p) for p in PROMPTS]

    info = await load(llama, root / ADAPTER)
    assert (info.id, info.parent, info.engine) == (ADAPTER, BASE, "llama.cpp")
    assert info.task == pb.MODEL_TASK_CHAT and info.max_model_len == 512
    listed = {m.id: m.parent for m in (await llama.stub.ListModels(pb.ListModelsRequest())).models}
    assert listed == {BASE: "", ADAPTER: BASE}

    adapted = [await answer(llama, p, model=ADAPTER) for p in PROMPTS]
    assert all(a.strip() for a in adapted)
    assert all(a != b for a, b in zip(adapted, base_before, strict=True)), (adapted, base_before)
    # No state leaks: the base answers as before, and the adapter as it did.
    assert [await answer(llama, p) for p in PROMPTS] == base_before
    assert [await answer(llama, p, model=ADAPTER) for p in PROMPTS] == adapted

    count = pb.CountTokensRequest(
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=PROMPTS[0])])
    )
    base_count = await llama.stub.CountTokens(count)
    count.model = ADAPTER
    assert (await llama.stub.CountTokens(count)).token_count == base_count.token_count


async def test_concurrent_base_and_adapter_requests(llama: Running) -> None:
    """Both contexts busy with a mix of base and adapter requests: each answer is the one it
    gets alone (the adapter is per request and per context, never shared by a neighbour)."""
    alone = {(p, m): await answer(llama, p, model=m) for p in PROMPTS for m in ("", ADAPTER)}
    calls = [(p, m) for p in PROMPTS for m in ("", ADAPTER)]
    together = await asyncio.gather(*(answer(llama, p, model=m) for p, m in calls))
    assert together == [alone[c] for c in calls]


@pytest.mark.parametrize(
    ("folder", "fields", "code", "message"),
    [
        ("wide", {}, grpc.StatusCode.INVALID_ARGUMENT, "does not fit the parent"),
        ("other-base", {}, grpc.StatusCode.INVALID_ARGUMENT, "trained on another base"),
        ("qwen", {}, grpc.StatusCode.INVALID_ARGUMENT, "LoRA for the 'qwen2' architecture"),
        ("deep", {}, grpc.StatusCode.INVALID_ARGUMENT, "no counterpart in the parent"),
        ("truncated", {}, grpc.StatusCode.INVALID_ARGUMENT, "corrupt or truncated"),
        ("garbage", {}, grpc.StatusCode.INVALID_ARGUMENT, "not a GGUF file"),
        ("empty", {}, grpc.StatusCode.INVALID_ARGUMENT, "no GGUF LoRA"),
        ("two", {}, grpc.StatusCode.INVALID_ARGUMENT, "more than one GGUF file"),
        ("missing", {}, grpc.StatusCode.INVALID_ARGUMENT, "is not a folder"),
        (ADAPTER, {"parent": "nope"}, grpc.StatusCode.NOT_FOUND, "parent model 'nope'"),
        (ADAPTER, {"parent": ADAPTER}, grpc.StatusCode.INVALID_ARGUMENT, "itself an adapter"),
        (ADAPTER, {"parent": ""}, grpc.StatusCode.INVALID_ARGUMENT, "give the parent"),
        (ADAPTER, {"id": ADAPTER}, grpc.StatusCode.ALREADY_EXISTS, "is served already"),
        (ADAPTER, {"id": BASE}, grpc.StatusCode.ALREADY_EXISTS, "is served already"),
        (ADAPTER, {"settings": {"n_ctx": "64"}}, grpc.StatusCode.INVALID_ARGUMENT, "no settings"),
        (
            ADAPTER,
            {"task": pb.MODEL_TASK_REWARD},
            grpc.StatusCode.INVALID_ARGUMENT,
            "only for LoRA adapters",
        ),
    ],
)
async def test_load_refusals_leave_nothing_behind(
    llama: Running,
    root: Path,
    folder: str,
    fields: dict[str, object],
    code: grpc.StatusCode,
    message: str,
) -> None:
    engine = engine_of(llama)
    before = (set(llama.serving.models), set(engine._adapters))
    values: dict[str, object] = {
        "id": "x@1",
        "task": pb.MODEL_TASK_CHAT,
        "path": str(root / folder),
        "parent": BASE,
    }
    values.update(fields)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llama.stub.LoadModel(pb.LoadModelRequest(**values))  # type: ignore[arg-type]
    assert caught.value.code() == code, caught.value.details()
    assert message in (caught.value.details() or "")
    assert (set(llama.serving.models), set(engine._adapters)) == before


async def test_unload_drains_running_requests_then_frees(llama: Running, root: Path) -> None:
    engine = engine_of(llama)
    (handle,) = [a for a in engine._adapters if a.adapter_id == ADAPTER]
    adapted_first = await answer(llama, PROMPTS[0], model=ADAPTER)
    long = generate_request(
        "Write a long story about a dragon.", ADAPTER, max_tokens=40, ignore_eos=True
    )
    stream = llama.stub.Generate(long)
    first = await stream.read()
    assert first.choices[0].token_count >= 1

    await llama.stub.UnloadModel(pb.UnloadModelRequest(id=ADAPTER))
    listed = [m.id for m in (await llama.stub.ListModels(pb.ListModelsRequest())).models]
    assert listed == [BASE]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer(llama, PROMPTS[0], model=ADAPTER)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert handle.pointers, "still in use by the running request: not freed yet"

    rest = []
    while (message := await stream.read()) != grpc.aio.EOF:
        rest.append(message)
    tokens = sum(d.token_count for r in [first, *rest] for d in r.choices)
    assert tokens == 40, "the running request finished with the adapter"
    async with asyncio.timeout(10):
        while handle in engine._adapters:  # noqa: ASYNC110 - freed by the worker's callback
            await asyncio.sleep(0.02)
    assert not handle.pointers

    # The id comes back only with the same weights.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await load(llama, root / "other-weights")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "never reused for other weights" in (caught.value.details() or "")
    assert ADAPTER not in llama.serving.models and len(engine._adapters) == 0
    info = await load(llama, root / ADAPTER)
    assert info.parent == BASE
    assert await answer(llama, PROMPTS[0], model=ADAPTER) == adapted_first
