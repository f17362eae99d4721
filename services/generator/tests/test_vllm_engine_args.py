"""How the vLLM chat engine builds AsyncLLM: `vllm serve`'s usage context (its batch defaults,
hence its CUDA graph sizes) and the operator's own engine arguments. vLLM cannot run here: a
recording double stands in for its modules and records what the engine hands AsyncLLM."""

from __future__ import annotations

import enum
import gc
import sys
import types
from typing import Any, ClassVar

import pytest

from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.vllm import VllmEngine, engine_args_kwargs, resolved_config


class UsageContext(enum.StrEnum):  # vllm.usage.usage_lib.UsageContext's members used here
    ENGINE_CONTEXT = "ENGINE_CONTEXT"
    OPENAI_API_SERVER = "OPENAI_API_SERVER"


class RecordingAsyncLLM:
    """Test double of vLLM's AsyncLLM: records from_engine_args' arguments; answers what
    VllmEngine.start() reads."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, engine_args: Any) -> None:
        self.errored = False
        self.model_config = types.SimpleNamespace(
            max_model_len=engine_args.kwargs.get("max_model_len", 2048),
            get_diff_sampling_param=lambda: {},
        )
        self.vllm_config = types.SimpleNamespace(
            scheduler_config=types.SimpleNamespace(
                max_num_seqs=1024,
                max_num_batched_tokens=8192,
                async_scheduling=True,
                stream_interval=1,
            ),
            compilation_config=types.SimpleNamespace(
                max_cudagraph_capture_size=512, cudagraph_mode="FULL_AND_PIECEWISE"
            ),
        )
        self.shut_down = False

    @classmethod
    def from_engine_args(cls, engine_args: Any, **kwargs: Any) -> RecordingAsyncLLM:
        cls.calls.append({"engine_args": engine_args.kwargs, **kwargs})
        return cls(engine_args)

    def get_tokenizer(self) -> object:
        return object()

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture
def recording_vllm(monkeypatch: pytest.MonkeyPatch) -> type[RecordingAsyncLLM]:
    def module(name: str, **names: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(names)
        return mod

    RecordingAsyncLLM.calls = []
    for name, mod in {
        "vllm": module("vllm"),
        "vllm.engine.arg_utils": module(
            "vllm.engine.arg_utils",
            AsyncEngineArgs=lambda **kwargs: types.SimpleNamespace(kwargs=kwargs),
        ),
        "vllm.usage.usage_lib": module("vllm.usage.usage_lib", UsageContext=UsageContext),
        "vllm.v1.engine.async_llm": module("vllm.v1.engine.async_llm", AsyncLLM=RecordingAsyncLLM),
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return RecordingAsyncLLM


@pytest.fixture
def freezes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records gc.collect/gc.freeze calls instead of freezing the test process's heap."""
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    return calls


async def test_the_engine_is_built_in_vllm_serves_usage_context(
    recording_vllm: type[RecordingAsyncLLM], freezes: list[str]
) -> None:
    engine = VllmEngine(
        served_model_name="m",
        engine_kwargs=engine_args_kwargs(model="/models/m", served_model_name="m"),
    )
    await engine.start()
    # As `vllm serve` once started: the start-up heap is frozen, after a full collection.
    assert freezes == ["collect", "freeze"]
    try:
        (call,) = recording_vllm.calls
        # AsyncLLM's default (ENGINE_CONTEXT) would take max_num_seqs 128 and CUDA graphs up
        # to 256 tokens where `vllm serve` takes 1024 and 512.
        assert call["usage_context"] is UsageContext.OPENAI_API_SERVER
        assert call["engine_args"]["model"] == "/models/m"
        assert len(call["stat_loggers"]) == 1
        assert engine.model_info().max_model_len == 2048
    finally:
        llm = engine._llm
        await engine.close()
    assert llm.shut_down


async def test_the_heap_freeze_can_be_turned_off(
    recording_vllm: type[RecordingAsyncLLM], freezes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENERATOR_VLLM_FREEZE_GC", "false")
    engine = VllmEngine.from_settings(GeneratorSettings(engine="vllm"))
    await engine.start()
    await engine.close()
    assert freezes == []


def test_extra_engine_arguments_win() -> None:
    kwargs = engine_args_kwargs(
        model="m",
        served_model_name="m",
        max_model_len=1024,
        extra={"max_num_seqs": 256, "stream_interval": 2, "max_model_len": 4096},
    )
    assert (kwargs["max_num_seqs"], kwargs["stream_interval"]) == (256, 2)
    assert kwargs["max_model_len"] == 4096
    assert "max_num_seqs" not in engine_args_kwargs(model="m", served_model_name="m")


def test_extra_engine_arguments_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENERATOR_ENGINE", "vllm")
    monkeypatch.setenv(
        "GENERATOR_VLLM_ENGINE_ARGS", '{"max_num_seqs": 128, "max_num_batched_tokens": 2048}'
    )
    engine = VllmEngine.from_settings(GeneratorSettings())
    assert engine._engine_kwargs["max_num_seqs"] == 128
    assert engine._engine_kwargs["max_num_batched_tokens"] == 2048
    assert engine._engine_kwargs["disable_log_stats"] is True


def test_the_resolved_batch_and_graph_settings_are_logged() -> None:
    config = types.SimpleNamespace(
        scheduler_config=types.SimpleNamespace(
            max_num_seqs=128, max_num_batched_tokens=2048, async_scheduling=True, stream_interval=1
        ),
        compilation_config=types.SimpleNamespace(
            max_cudagraph_capture_size=256, cudagraph_mode="FULL_AND_PIECEWISE"
        ),
    )
    assert resolved_config(config) == {
        "max_num_seqs": 128,
        "max_num_batched_tokens": 2048,
        "async_scheduling": True,
        "stream_interval": 1,
        "max_cudagraph_capture_size": 256,
        "cudagraph_mode": "FULL_AND_PIECEWISE",
    }
    assert resolved_config(None)["max_num_seqs"] is None
