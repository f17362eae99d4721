"""LoadModel of a LoRA adapter on a parent whose engine serves none (the scripted engine), over
real gRPC: FAILED_PRECONDITION naming the engine, and nothing registered."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from parlance.generator.config import GeneratorSettings
from parlance.generator.main import create_host
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc


async def test_an_engine_without_adapters_refuses_them(tmp_path: Path) -> None:
    (tmp_path / "lora").mkdir()
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
                id="a@1", task=pb.MODEL_TASK_CHAT, path=str(tmp_path / "lora"), parent="scripted"
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.LoadModel(request)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "does not serve LoRA adapters" in (caught.value.details() or "")
            listed = await stub.ListModels(pb.ListModelsRequest())
            assert [(m.id, m.parent) for m in listed.models] == [("scripted", "")]
            assert list(serving.models) == ["scripted"]
    finally:
        await host.stop()
