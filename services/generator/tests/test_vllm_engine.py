"""The vLLM engine.

Pure mappings (sampling options -> SamplingParams keyword arguments, finish reasons, logprobs,
engine arguments) run everywhere. The rest is marked `gpu`: it serves the real SmolLM2 model
(an HF folder at $SMOLLM2_HF_DIR, see ../shared/gpu/README.md) through vLLM over real gRPC and
is skipped where vLLM, CUDA or the model is missing. The tests share one engine (start-up takes
a minute or two) and run in file order: the last one kills the engine core.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parlance.common.errors import InvalidArgument, ParlanceError
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.base import FinishReason, SamplingOptions
from parlance.generator.engine.vllm import (
    VllmEngine,
    engine_args_kwargs,
    finish_reason_from_vllm,
    logprobs_from_vllm,
    queued_seconds,
    sampling_kwargs,
)
from parlance.generator.main import create_host
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc

# -- pure mappings ------------------------------------------------------------------------------


def test_unset_options_get_openai_defaults_and_the_whole_budget() -> None:
    kwargs = sampling_kwargs(SamplingOptions(), budget=1000)
    assert kwargs == {
        "n": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": None,
        "stop": [],
        "max_tokens": 1000,
        "logprobs": None,
        "ignore_eos": False,
        "skip_special_tokens": True,
    }


def test_every_option_is_mapped() -> None:
    options = SamplingOptions(
        max_tokens=50,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=42,
        stop=("\n\n", "END"),
        n=3,
        logprobs=True,
        top_logprobs=5,
        ignore_eos=True,
    )
    assert sampling_kwargs(options, budget=1000) == {
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "seed": 42,
        "stop": ["\n\n", "END"],
        "max_tokens": 50,
        "logprobs": 5,
        "ignore_eos": True,
        "skip_special_tokens": True,
    }


def test_logprobs_without_top_logprobs_asks_for_the_sampled_token_only() -> None:
    assert sampling_kwargs(SamplingOptions(logprobs=True), budget=10)["logprobs"] == 0


def test_max_tokens_is_clamped_to_the_context_window() -> None:
    assert sampling_kwargs(SamplingOptions(max_tokens=5000), budget=300)["max_tokens"] == 300


def test_model_defaults_fill_unset_fields_only() -> None:
    defaults = {"temperature": 0.2, "top_p": 0.95, "top_k": 50, "max_tokens": 64}
    unset = sampling_kwargs(SamplingOptions(), budget=1000, defaults=defaults)
    assert (unset["temperature"], unset["top_p"], unset["top_k"]) == (0.2, 0.95, 50)
    assert unset["max_tokens"] == 64
    explicit = sampling_kwargs(
        SamplingOptions(temperature=1.0, top_p=1.0, top_k=0, max_tokens=500),
        budget=1000,
        defaults=defaults,
    )
    assert (explicit["temperature"], explicit["top_p"], explicit["top_k"]) == (1.0, 1.0, 0)
    assert explicit["max_tokens"] == 500


def test_negative_top_k_disables_it() -> None:
    assert sampling_kwargs(SamplingOptions(top_k=-1), budget=10)["top_k"] == 0


def test_several_greedy_choices_are_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        sampling_kwargs(SamplingOptions(n=2, temperature=0.0), budget=10)
    assert caught.value.param == "n"


def test_common_range_checks_apply() -> None:
    with pytest.raises(InvalidArgument) as caught:
        sampling_kwargs(SamplingOptions(top_logprobs=3), budget=10)
    assert caught.value.param == "top_logprobs"


def test_finish_reasons() -> None:
    assert finish_reason_from_vllm(None) is None
    assert finish_reason_from_vllm("stop") is FinishReason.STOP
    assert finish_reason_from_vllm("length") is FinishReason.LENGTH
    assert finish_reason_from_vllm("abort") is FinishReason.ABORT
    assert finish_reason_from_vllm("repetition") is FinishReason.STOP
    with pytest.raises(ParlanceError):
        finish_reason_from_vllm("error")


@dataclass
class _Logprob:
    """The shape of vllm.logprobs.Logprob (vLLM is not installed where these tests run)."""

    logprob: float
    rank: int | None
    decoded_token: str | None


def test_logprobs_take_the_sampled_token_and_the_top_ranked() -> None:
    # Position 0: the sampled token (7) is the most likely. Position 1: it ranks 9th, so vLLM
    # sends it beside the top 2.
    positions = [
        {7: _Logprob(-0.1, 1, " a"), 8: _Logprob(-2.5, 2, " b")},
        {9: _Logprob(-6.0, 9, "é"), 3: _Logprob(-0.3, 1, "x"), 4: _Logprob(-1.2, 2, "y")},
    ]
    result = logprobs_from_vllm([7, 9], positions, top_logprobs=2)
    assert [(r.token, r.logprob, r.token_bytes) for r in result] == [
        (" a", -0.1, b" a"),
        ("é", -6.0, "é".encode()),
    ]
    assert [(t.token, t.logprob) for t in result[0].top_logprobs] == [(" a", -0.1), (" b", -2.5)]
    assert [(t.token, t.logprob) for t in result[1].top_logprobs] == [("x", -0.3), ("y", -1.2)]
    assert logprobs_from_vllm([7], [positions[0]], top_logprobs=0)[0].top_logprobs == ()
    assert logprobs_from_vllm([7], None, top_logprobs=0) == []


def test_queue_time_from_engine_timestamps() -> None:
    @dataclass
    class Stats:
        queued_ts: float
        scheduled_ts: float

    assert queued_seconds(Stats(10.0, 10.25)) == pytest.approx(0.25)
    assert queued_seconds(Stats(0.0, 0.0)) is None
    assert queued_seconds(None) is None


def test_engine_arguments_from_settings() -> None:
    settings = GeneratorSettings(
        engine="vllm",
        model="/models/x",
        served_model_name="x",
        max_model_len=4096,
        gpu_memory_utilization=0.5,
        quantization="fp8",
        enforce_eager=True,
    )
    engine = VllmEngine.from_settings(settings)
    assert engine._engine_kwargs == {
        "model": "/models/x",
        "served_model_name": "x",
        "dtype": "auto",
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "quantization": "fp8",
        "enforce_eager": True,
        "disable_log_stats": True,
        "enable_log_requests": False,
    }
    assert engine_args_kwargs(model="m", served_model_name="m", tokenizer="t")["tokenizer"] == "t"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "GENERATOR_MODEL": "org/model",
        "GENERATOR_TOKENIZER": "org/tok",
        "GENERATOR_DTYPE": "bfloat16",
        "GENERATOR_MAX_MODEL_LEN": "2048",
        "GENERATOR_GPU_MEMORY_UTILIZATION": "0.5",
        "GENERATOR_TENSOR_PARALLEL_SIZE": "2",
        "GENERATOR_QUANTIZATION": "awq",
        "GENERATOR_ENFORCE_EAGER": "true",
    }.items():
        monkeypatch.setenv(name, value)
    s = GeneratorSettings()
    assert (s.model, s.tokenizer, s.dtype, s.max_model_len) == (
        "org/model",
        "org/tok",
        "bfloat16",
        2048,
    )
    assert (s.gpu_memory_utilization, s.tensor_parallel_size) == (0.5, 2)
    assert (s.quantization, s.enforce_eager) == ("awq", True)


# -- on the GPU ---------------------------------------------------------------------------------


def _gpu_ready() -> str | None:
    """Why the GPU tests cannot run here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    if not os.environ.get("SMOLLM2_HF_DIR"):
        return "SMOLLM2_HF_DIR (the SmolLM2 HF folder) is not set"
    return None


_NOT_READY = _gpu_ready()


def on_gpu(test):  # type: ignore[no-untyped-def]
    for mark in (
        pytest.mark.gpu,
        pytest.mark.skipif(_NOT_READY is not None, reason=_NOT_READY or ""),
        pytest.mark.asyncio(loop_scope="module"),
    ):
        test = mark(test)
    return test


@dataclass
class Served:
    host: object
    engine: VllmEngine
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub
    health: health_pb2_grpc.HealthStub

    async def generate(self, user: str, **sampling: object) -> list[pb.GenerateResponse]:
        return [r async for r in self.stub.Generate(request(user, **sampling))]


def request(user: str, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=user)]),
        sampling=pb.SamplingParams(**sampling),
    )


def text(responses: list[pb.GenerateResponse], index: int = 0) -> str:
    return "".join(d.text for r in responses for d in r.choices if d.index == index)


def tokens(responses: list[pb.GenerateResponse], index: int | None = None) -> int:
    return sum(
        d.token_count for r in responses for d in r.choices if index is None or d.index == index
    )


def finish(responses: list[pb.GenerateResponse], index: int = 0) -> int:
    reasons = [d.finish_reason for r in responses for d in r.choices if d.index == index]
    assert all(not r for r in reasons[:-1]), "only the last delta of a choice finishes it"
    return reasons[-1]


def usage(responses: list[pb.GenerateResponse]) -> pb.Usage:
    assert responses[-1].HasField("usage")
    assert not any(r.HasField("usage") for r in responses[:-1])
    return responses[-1].usage


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[Served]:
    settings = GeneratorSettings(
        engine="vllm",
        model=os.environ["SMOLLM2_HF_DIR"],
        served_model_name="smollm2",
        max_model_len=2048,
        gpu_memory_utilization=0.4,
        port=0,
        metrics_port=-1,
        shutdown_grace_s=1.0,
    )
    host, serving = create_host(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    engine = serving.engine
    assert isinstance(engine, VllmEngine)
    yield Served(
        host,
        engine,
        channel,
        generator_pb2_grpc.GeneratorServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )
    await channel.close()
    await host.stop()  # type: ignore[attr-defined]


async def wait_until(predicate, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    """Polls a condition (a deadline for a liveness condition, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(await predicate())


@on_gpu
async def test_serving_after_start(served: Served) -> None:
    reply = await served.health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    models = await served.stub.ListModels(pb.ListModelsRequest())
    assert [(m.id, m.engine, m.max_model_len) for m in models.models] == [("smollm2", "vllm", 2048)]


@on_gpu
async def test_streams_deltas_with_exact_usage(served: Served) -> None:
    responses = await served.generate("Name three colours.", temperature=0.0, max_tokens=64)
    assert len(responses) > 2, "streamed as deltas, not one message"
    assert all(r.model == "smollm2" for r in responses)
    counted = await served.stub.CountTokens(
        pb.CountTokensRequest(
            chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="Name three colours.")])
        )
    )
    u = usage(responses)
    assert u.prompt_tokens == counted.token_count
    assert u.completion_tokens == tokens(responses) > 0
    assert finish(responses) in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)

    # The same greedy request straight into vLLM (vLLM's own tokenizer and chat template) gives
    # the same text and token count: nothing is lost or added between vLLM and the stream.
    from vllm import SamplingParams, TokensPrompt

    llm = served.engine._llm
    tokenizer = llm.get_tokenizer()
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    prompt_ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert len(prompt_ids) == u.prompt_tokens
    final = None
    async for output in llm.generate(
        TokensPrompt(prompt_token_ids=prompt_ids),
        SamplingParams(temperature=0.0, max_tokens=64),
        request_id="reference",
    ):
        final = output
    assert final is not None and final.finished
    assert final.outputs[0].text == text(responses)
    assert len(final.outputs[0].token_ids) == u.completion_tokens


@on_gpu
async def test_max_tokens_ends_with_length(served: Served) -> None:
    responses = await served.generate("Count to fifty.", max_tokens=5, ignore_eos=True, seed=1)
    assert finish(responses) == pb.FINISH_REASON_LENGTH
    assert usage(responses).completion_tokens == tokens(responses) == 5


@on_gpu
async def test_two_choices_stream_with_their_indices(served: Served) -> None:
    responses = await served.generate(
        "Tell me a story.", n=2, temperature=1.0, seed=7, max_tokens=16, ignore_eos=True
    )
    indices = {d.index for r in responses for d in r.choices}
    assert indices == {0, 1}
    assert finish(responses, 0) == finish(responses, 1) == pb.FINISH_REASON_LENGTH
    assert tokens(responses, 0) == tokens(responses, 1) == 16
    assert usage(responses).completion_tokens == 32


@on_gpu
async def test_logprobs_and_top_logprobs(served: Served) -> None:
    # No penalties (the model's generation config may set some): greedy then takes the
    # token with the highest raw logprob, which is what vLLM reports.
    responses = await served.generate(
        "Say hello.",
        temperature=0.0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
    )
    deltas = [d for r in responses for d in r.choices]
    assert sum(len(d.logprobs) for d in deltas) == tokens(responses)
    for delta in deltas:
        assert len(delta.logprobs) == delta.token_count
        # Each entry belongs to the token at its position in this delta.
        assert "".join(e.token for e in delta.logprobs) == delta.text
        for entry in delta.logprobs:
            assert entry.logprob <= 0.0
            assert len(entry.top_logprobs) == 3
            ranked = [t.logprob for t in entry.top_logprobs]
            assert ranked == sorted(ranked, reverse=True)
            # Greedy: the sampled token is the most likely one, up to near-ties: vLLM reports
            # logprobs of the raw logits in float32 while sampling compares bf16 logits (seen on
            # an H200: "!" sampled while " there" was reported as the most likely).
            assert entry.logprob >= entry.top_logprobs[0].logprob - 0.1
            for top in entry.top_logprobs:
                if top.token == entry.token:
                    assert top.logprob == pytest.approx(entry.logprob, abs=1e-4)


@on_gpu
async def test_stop_string_ends_the_choice_before_it(served: Served) -> None:
    free = text(
        await served.generate("Describe the sea.", temperature=0.0, max_tokens=40, ignore_eos=True)
    )
    assert len(free) > 20
    stop = free[12:16]
    assert stop.strip(), f"pick a stop string with text in it: {free!r}"
    responses = await served.generate(
        "Describe the sea.", temperature=0.0, max_tokens=40, ignore_eos=True, stop=[stop]
    )
    assert text(responses) == free[: free.index(stop)]
    assert finish(responses) == pb.FINISH_REASON_STOP


@on_gpu
async def test_a_seed_reproduces_sampling(served: Served) -> None:
    sampling = {"temperature": 1.0, "seed": 1234, "max_tokens": 24, "ignore_eos": True}
    first = await served.generate("Write a poem.", **sampling)
    second = await served.generate("Write a poem.", **sampling)
    assert text(first) == text(second)


@on_gpu
async def test_penalties_and_vllm_extensions_are_accepted(served: Served) -> None:
    responses = await served.generate(
        "List animals.",
        temperature=0.8,
        top_p=0.9,
        top_k=20,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        max_tokens=16,
    )
    assert usage(responses).completion_tokens == tokens(responses) > 0


@on_gpu
async def test_requests_run_side_by_side(served: Served) -> None:
    results = await asyncio.gather(
        *(
            served.generate(f"Question {i}: what is {i} + {i}?", max_tokens=12, ignore_eos=True)
            for i in range(16)
        )
    )
    for responses in results:
        assert usage(responses).completion_tokens == tokens(responses) == 12


@on_gpu
async def test_impossible_requests_are_invalid_arguments(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.generate("Hi", n=2, temperature=0.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("n:")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.generate("word " * 3000)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("messages:")


@on_gpu
async def test_cancelling_the_call_aborts_the_engine_request(served: Served) -> None:
    call = served.stub.Generate(request("Write a long essay.", max_tokens=1500, ignore_eos=True))
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            break
    call.cancel()

    async def idle() -> bool:
        return served.engine.num_unfinished_requests() == 0 and not served.engine._inflight

    assert await wait_until(idle), "the engine still tracks the cancelled request"


@on_gpu
async def test_a_dead_engine_turns_health_not_serving(served: Served) -> None:
    """Must run last: it kills the engine core process."""
    manager = served.engine._llm.engine_core.resources.engine_manager
    for process in manager.processes:
        os.kill(process.pid, signal.SIGKILL)

    async def not_serving() -> bool:
        reply = await served.health.Check(health_pb2.HealthCheckRequest(service=""))
        return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

    assert await wait_until(not_serving), "health still SERVING after the engine core died"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.generate("Hi", max_tokens=4)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
