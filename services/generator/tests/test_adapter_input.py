"""Malformed adapter files and paths (review finding L3): each is a clear INVALID_ARGUMENT-class
refusal (AdapterError from the readers, InvalidArgument over gRPC), never an IndexError,
RecursionError, TypeError or ValueError that the service turns into INTERNAL. The files are
written byte by byte here (GGUF headers, safetensors headers, adapter_config.json), as an
attacker or a broken converter could; the GGUF/LoRA cases that need a real base model run
through llama.cpp in test_lora_llamacpp.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import grpc
import pytest

from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.lora import (
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    AdapterError,
    GgufHeader,
    check_gguf_lora,
    read_gguf_header,
    read_peft_adapter,
)
from parlance.generator.main import create_host
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc

_ARRAY, _UINT8 = 9, 0


def gguf_with_one_value(path: Path, value: bytes) -> Path:
    """A GGUF v3 header: no tensors, one key "k" whose typed value is `value`."""
    key = struct.pack("<Q", 1) + b"k"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + key + value)
    return path


def test_deeply_nested_gguf_arrays_are_refused(tmp_path: Path) -> None:
    # Arrays of one array each, 2,000 deep (12 bytes a level): a recursive reader overflows.
    levels = struct.pack("<IQ", _ARRAY, 1) * 2000
    nested = struct.pack("<I", _ARRAY) + levels + struct.pack("<IQ", _UINT8, 0)
    with pytest.raises(AdapterError, match="nested"):
        read_gguf_header(gguf_with_one_value(tmp_path / "deep.gguf", nested))


@pytest.mark.timeout(60)  # listing 2^40 items would run (and allocate) far past it
def test_a_huge_gguf_array_count_is_refused_at_once(tmp_path: Path) -> None:
    # 2^40 one-byte items announced, a few present: refused without reading (or listing) them;
    # a reader that tried would stop at the end of the file with another message.
    huge = struct.pack("<IIQ", _ARRAY, _UINT8, 1 << 40) + bytes(16)
    with pytest.raises(AdapterError, match="a GGUF array of"):
        read_gguf_header(gguf_with_one_value(tmp_path / "huge.gguf", huge))


def test_a_long_scalar_array_is_skipped_not_listed(tmp_path: Path) -> None:
    items = struct.pack("<IIQ", _ARRAY, _UINT8, 100_000) + bytes(100_000)
    header = read_gguf_header(gguf_with_one_value(tmp_path / "long.gguf", items))
    assert header.metadata == {} and header.tensors == {}


def test_a_lora_on_a_one_dimensional_base_tensor_is_refused() -> None:
    meta = {"general.type": "adapter", "adapter.type": "lora", "general.architecture": "llama"}
    adapter = GgufHeader(
        meta, {"blk.0.attn_norm.weight.lora_a": (576, 8), "blk.0.attn_norm.weight.lora_b": (8, 1)}
    )
    base = GgufHeader({"general.architecture": "llama"}, {"blk.0.attn_norm.weight": (576,)})
    with pytest.raises(AdapterError, match="does not fit the parent"):
        check_gguf_lora(adapter, base, where="a.gguf")


def peft_folder(root: Path, config: object, header: object) -> Path:
    root.mkdir()
    (root / PEFT_CONFIG).write_text(json.dumps(config))
    raw = json.dumps(header).encode()
    (root / PEFT_WEIGHTS).write_bytes(struct.pack("<Q", len(raw)) + raw)
    return root


LORA = {"peft_type": "LORA", "r": 8}
TENSOR = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize(
    ("config", "header", "message"),
    [
        (LORA, {TENSOR: {"dtype": "F32", "shape": [None], "data_offsets": [0, 0]}}, "shape"),
        (LORA, {TENSOR: {"dtype": "F32", "shape": "8x576", "data_offsets": [0, 0]}}, "shape"),
        (LORA, [1, 2, 3], "not a JSON object"),
        ({**LORA, "r": "abc"}, {TENSOR: {"shape": [8, 576]}}, "r must be"),
    ],
)
def test_malformed_peft_adapters_are_refused(
    tmp_path: Path, config: object, header: object, message: str
) -> None:
    with pytest.raises(AdapterError, match=message):
        read_peft_adapter(peft_folder(tmp_path / "peft", config, header))


async def test_a_path_with_a_nul_is_an_invalid_argument(tmp_path: Path) -> None:
    settings = GeneratorSettings(
        port=0,
        metrics_port=-1,
        shutdown_grace_s=1.0,
        engine="scripted",
        served_model_name="scripted",
        load_root=str(tmp_path),
    )
    host, serving = create_host(settings)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            request = pb.LoadModelRequest(
                id="a@1", task=pb.MODEL_TASK_CHAT, path=f"{tmp_path}/a\x00b", parent="scripted"
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.LoadModel(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "NUL" in (caught.value.details() or "")
            assert list(serving.models) == ["scripted"]
    finally:
        await host.stop()
