"""ScriptedEngine: the test engine, served over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from parlance.generator.engine.base import GenerationRequest, SamplingOptions
from parlance.generator.engine.scripted import ScriptedEngine, split_tokens
from parlance.generator.v1 import generator_pb2 as pb

SCRIPT = "The quick brown fox jumps over the lazy dog."


@pytest_asyncio.fixture
async def scripted(test_settings_factory, serve_generator) -> AsyncIterator:  # type: ignore[no-untyped-def]
    running = await serve_generator(
        test_settings_factory(engine="scripted", scripted_text=SCRIPT, scripted_tokens_per_s=0)
    )
    yield running
    await running.aclose()


async def test_streams_the_script_word_by_word(scripted) -> None:  # type: ignore[no-untyped-def]
    counted = await scripted.stub.CountTokens(
        pb.CountTokensRequest(chat=scripted.chat(("user", "hi there")))
    )
    result = await scripted.generate("hi there")
    assert result.text() == SCRIPT
    assert [d.text for r in result.responses for d in r.choices] == split_tokens(SCRIPT)
    assert result.finish() == pb.FINISH_REASON_STOP
    assert result.usage.prompt_tokens == counted.token_count
    assert result.usage.completion_tokens == result.tokens() == 9
    listed = await scripted.stub.ListModels(pb.ListModelsRequest())
    assert listed.models[0].engine == "scripted"


async def test_max_tokens_stop_and_n(scripted) -> None:  # type: ignore[no-untyped-def]
    result = await scripted.generate("hi", max_tokens=3)
    assert (result.text(), result.finish(), result.tokens()) == (
        "The quick brown",
        pb.FINISH_REASON_LENGTH,
        3,
    )
    result = await scripted.generate("hi", stop=["own f"])
    assert (result.text(), result.finish()) == ("The quick br", pb.FINISH_REASON_STOP)
    assert result.usage.completion_tokens == 4
    result = await scripted.generate("hi", n=2, max_tokens=2, logprobs=True, top_logprobs=1)
    assert result.text(0) == result.text(1) == "The quick"
    assert result.usage.completion_tokens == 4
    assert all(len(d.logprobs) == d.token_count for r in result.responses for d in r.choices)


async def test_ignore_eos_repeats_the_script(scripted) -> None:  # type: ignore[no-untyped-def]
    result = await scripted.generate("hi", max_tokens=12, ignore_eos=True)
    assert result.tokens() == 12
    assert result.finish() == pb.FINISH_REASON_LENGTH
    assert result.text().startswith(SCRIPT + " The quick")


async def test_echoes_without_a_script(test_settings_factory, serve_generator) -> None:  # type: ignore[no-untyped-def]
    running = await serve_generator(
        test_settings_factory(engine="scripted", scripted_tokens_per_s=0)
    )
    try:
        result = await running.generate("echo these words")
        assert result.text() == "echo these words"
        result = await running.generate(prompt="a raw prompt")
        assert result.text() == "a raw prompt"
    finally:
        await running.aclose()


async def test_cancel_mid_stream(test_settings_factory, serve_generator) -> None:  # type: ignore[no-untyped-def]
    running = await serve_generator(
        test_settings_factory(engine="scripted", scripted_text=SCRIPT, scripted_tokens_per_s=50)
    )
    try:
        call = running.stub.Generate(running.request("hi", max_tokens=10_000, ignore_eos=True))
        await call.read()
        assert running.engine.stats().running == 1
        call.cancel()
        # Polls engine state (no event to await); the timeout turns a leak into a failure.
        async with asyncio.timeout(10):
            while running.engine.stats().running:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        result = await running.generate("hi", max_tokens=2)
        assert result.text() == "The quick"
    finally:
        await running.aclose()


async def test_abort_ends_the_stream_with_abort() -> None:
    engine = ScriptedEngine(served_model_name="m", text=SCRIPT, tokens_per_s=0)
    await engine.start()
    request = GenerationRequest(
        request_id="r1", prompt="hi", sampling=SamplingOptions(max_tokens=100, ignore_eos=True)
    )
    reasons = []
    async for step in engine.generate(request):
        reasons += [d.finish_reason for d in step.choices if d.finish_reason]
        await engine.abort("r1")
    assert [r.value for r in reasons] == ["abort"]
    assert engine.stats().running == 0


async def test_unknown_model_and_bad_input(scripted) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scripted.stub.CountTokens(pb.CountTokensRequest(model="other", prompt="x"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scripted.generate(prompt="x", top_logprobs=2)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("top_logprobs: ")
    bad_role = pb.GenerateRequest(chat=scripted.chat(("wizard", "hi")))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scripted.stub.Generate(bad_role).read()
    assert caught.value.details().startswith("messages: ")
