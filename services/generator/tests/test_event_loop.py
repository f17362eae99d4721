"""The generator's event loop: uvloop for the vLLM engine (as `vllm serve` runs), asyncio's own
otherwise, and the gRPC service working on uvloop end to end (real server, real channel)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
import uvloop

from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.scripted import ScriptedEngine
from parlance.generator.main import create_host, loop_factory
from parlance.generator.models import model_specs
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc


def test_auto_takes_uvloop_for_vllm_only() -> None:
    assert loop_factory(GeneratorSettings(engine="vllm")) is uvloop.new_event_loop
    assert loop_factory(GeneratorSettings(engine="llamacpp")) is None
    assert loop_factory(GeneratorSettings(engine="scripted")) is None


def test_a_list_with_a_vllm_model_takes_uvloop() -> None:
    models = [
        {"id": "chat", "engine": "vllm", "path": "/models/chat"},
        {"id": "embed", "engine": "transformers", "task": "embed", "path": "/models/e"},
    ]
    assert loop_factory(GeneratorSettings(models=json.dumps(models))) is uvloop.new_event_loop


def test_a_bad_list_leaves_the_error_to_the_service() -> None:
    assert loop_factory(GeneratorSettings(models="[]")) is None


def test_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop_factory(GeneratorSettings(engine="vllm", event_loop="asyncio")) is None
    monkeypatch.setenv("GENERATOR_EVENT_LOOP", "uvloop")
    assert loop_factory(GeneratorSettings(engine="llamacpp")) is uvloop.new_event_loop


def test_event_loop_is_a_process_setting() -> None:
    models = [{"id": "m", "engine": "scripted", "settings": {"event_loop": "uvloop"}}]
    with pytest.raises(ValueError, match="event_loop"):
        model_specs(GeneratorSettings(models=json.dumps(models)))


async def _stream_once() -> tuple[str, bool]:
    settings = GeneratorSettings(port=0, metrics_port=-1, shutdown_grace_s=1.0)
    engine = ScriptedEngine(
        served_model_name="scripted",
        text="one two three four",
        tokens_per_s=1000.0,
        max_model_len=512,
    )
    host, _ = create_host(settings, engine)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            message = pb.GenerateRequest(
                chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="hi")])
            )
            replies = [r async for r in stub.Generate(message)]
    finally:
        await host.stop()
    text = "".join(c.text for r in replies for c in r.choices)
    running = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    return text, running


def test_the_service_streams_on_uvloop() -> None:
    # As main() runs the service (asyncio.run has no loop_factory before Python 3.12).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        text, on_uvloop = runner.run(_stream_once())
    assert on_uvloop
    assert text == "one two three four"
