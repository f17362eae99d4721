"""The generator with the real SmolLM2 GGUF through llama.cpp, over real gRPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from parlance.common.errors import openai_code_of
from parlance.generator.v1 import generator_pb2 as pb

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = "What is the capital of France?"


async def wait_idle(engine, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Waits for the engine's slot to come back (bounded, so a leak fails instead of hanging)."""
    async with asyncio.timeout(timeout_s):
        while engine.stats().running or engine.stats().waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_list_models(llama) -> None:  # type: ignore[no-untyped-def]
    response = await llama.stub.ListModels(pb.ListModelsRequest())
    (model,) = response.models
    assert model.id == "SmolLM2-135M-Instruct"
    assert model.engine == "llama.cpp"
    assert model.max_model_len == 2048
    assert model.created > 0


async def test_stream_assembles_text_with_exact_usage(llama) -> None:  # type: ignore[no-untyped-def]
    counted = await llama.stub.CountTokens(
        pb.CountTokensRequest(chat=llama.chat(("user", QUESTION)))
    )
    result = await llama.generate(QUESTION, max_tokens=24, temperature=0.0)
    assert len(result.responses) > 1, "the answer is streamed"
    assert result.text().strip()
    assert all(r.model == "SmolLM2-135M-Instruct" for r in result.responses)
    assert result.usage.prompt_tokens == counted.token_count
    assert counted.max_model_len == 2048
    assert result.usage.completion_tokens == result.tokens() > 0
    assert result.finish() in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


async def test_matches_llama_cpp_python_chat_completion(llama) -> None:  # type: ignore[no-untyped-def]
    """Greedy output and usage equal llama-cpp-python's own chat completion on the same GGUF:
    the chat template, tokenization and token loop are the model's, not an approximation."""
    from llama_cpp import Llama

    from parlance.generator.engine.llamacpp import default_model_path

    reference = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=1, verbose=False)
    try:
        expected = reference.create_chat_completion(
            messages=[{"role": "user", "content": QUESTION}], temperature=0.0, max_tokens=16
        )
    finally:
        reference.close()
    result = await llama.generate(QUESTION, max_tokens=16, temperature=0.0)
    assert result.text() == expected["choices"][0]["message"]["content"]
    assert result.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert result.usage.completion_tokens == expected["usage"]["completion_tokens"]


async def test_contexts_evaluate_prompts_on_the_configured_threads(llama) -> None:  # type: ignore[no-untyped-def]
    """n_threads bounds prompt evaluation too (llama-cpp-python's n_threads_batch would
    otherwise take every core beside a pool of one-thread contexts)."""
    instances = llama.engine._instances
    assert len(instances) == 2
    for instance in instances:
        assert instance.context_params.n_threads == 1
        assert instance.context_params.n_threads_batch == 1


async def test_max_tokens_finishes_with_length(llama) -> None:  # type: ignore[no-untyped-def]
    result = await llama.generate("Write a long story about a dragon.", max_tokens=5)
    assert result.finish() == pb.FINISH_REASON_LENGTH
    assert result.tokens() == result.usage.completion_tokens == 5


async def test_stop_string_is_honoured_and_not_returned(llama) -> None:  # type: ignore[no-untyped-def]
    full = (await llama.generate(QUESTION, max_tokens=24, temperature=0.0)).text()
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3
    result = await llama.generate(QUESTION, max_tokens=24, temperature=0.0, stop=[stop])
    assert result.finish() == pb.FINISH_REASON_STOP
    assert result.text() == full[: full.index(stop)]
    assert result.usage.completion_tokens == result.tokens()


async def test_seed_makes_sampling_reproducible(llama) -> None:  # type: ignore[no-untyped-def]
    params = {"max_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    first = await llama.generate("Tell me a joke.", **params)
    second = await llama.generate("Tell me a joke.", **params)
    assert first.text() == second.text() != ""


async def test_n_choices_and_logprobs(llama) -> None:  # type: ignore[no-untyped-def]
    result = await llama.generate(
        QUESTION, max_tokens=6, temperature=0.0, n=2, logprobs=True, top_logprobs=3
    )
    # Each choice is greedy (checked token by token below); the second runs on a context that
    # holds the prompt whole, which can move log-probs (see forget_prompts): not compared.
    assert result.text(0) != "" and result.text(1) != ""
    assert result.usage.completion_tokens == result.tokens(0) + result.tokens(1)
    for response in result.responses:
        for delta in response.choices:
            assert len(delta.logprobs) == delta.token_count
            for logprob in delta.logprobs:
                assert logprob.logprob <= 0.0
                assert len(logprob.top_logprobs) == 3
                # Greedy picks the most likely token.
                assert logprob.top_logprobs[0].token_bytes == logprob.token_bytes
                assert logprob.top_logprobs[0].logprob == pytest.approx(logprob.logprob)


# Greedy answers are compared after `forget_prompts`. What a llama.cpp context has run before
# changes a prompt's log-probs (measured here, SmolLM2, one thread a context): the same prompt
# asked again right after itself moved them by up to 0.86 nats ("What is 2 + 2?"), and a
# context's first decode differed from its later ones; enough to flip a greedy token (CI once
# got "Hola in English" for "Hola in Spanish", 0.004 nats apart). After an unrelated prompt
# had run on each context, the same prompt gave identical log-probs on either context, with
# two different unrelated prompts before it (four prompts measured).
async def forget_prompts(llama) -> None:  # type: ignore[no-untyped-def]
    """Runs an unrelated prompt on each of the pool's two contexts at once."""
    await asyncio.gather(
        *(llama.generate(f"Unrelated prompt {i}: tell me a story.", max_tokens=1) for i in (1, 2))
    )


async def test_temperature_zero_is_deterministic(llama) -> None:  # type: ignore[no-untyped-def]
    await forget_prompts(llama)
    first = await llama.generate("Name three colors.", max_tokens=16, temperature=0.0)
    await forget_prompts(llama)
    second = await llama.generate("Name three colors.", max_tokens=16, temperature=0.0)
    assert first.text() == second.text() != ""


async def test_concurrent_requests_are_not_corrupted(llama) -> None:  # type: ignore[no-untyped-def]
    # No two share a first word: whichever context a question lands on, it reuses only the
    # chat header of the question before (the condition measured above).
    questions = [
        "What is the capital of France?",
        "Name three colors.",
        "How much is 2 + 2?",
        "Say hello in Spanish.",
    ]
    await forget_prompts(llama)
    one_by_one = [
        (await llama.generate(q, max_tokens=12, temperature=0.0)).text() for q in questions
    ]
    await forget_prompts(llama)
    together = await asyncio.gather(
        *(llama.generate(q, max_tokens=12, temperature=0.0) for q in questions)
    )
    assert [r.text() for r in together] == one_by_one


async def test_a_character_cut_by_max_tokens_is_dropped_not_replaced(llama) -> None:  # type: ignore[no-untyped-def]
    # SmolLM2 ends this greeting with emoji; its 12th token is the first bytes of one.
    await forget_prompts(llama)
    result = await llama.generate(
        "Say hello in Spanish.", max_tokens=12, temperature=0.0, logprobs=True
    )
    raw = b"".join(lp.token_bytes for r in result.responses for d in r.choices for lp in d.logprobs)
    with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
        raw.decode("utf-8")  # the case this is about: the answer's bytes end mid-character
    assert result.finish() == pb.FINISH_REASON_LENGTH and result.tokens() == 12
    assert result.text() == raw.decode("utf-8", errors="ignore")
    assert "\ufffd" not in result.text()


async def test_cancelling_a_stream_frees_the_slot(llama) -> None:  # type: ignore[no-untyped-def]
    call = llama.stub.Generate(
        llama.request("Count from one to a thousand.", max_tokens=1000, ignore_eos=True)
    )
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            break
    assert llama.engine.stats().running == 1
    call.cancel()
    await wait_idle(llama.engine)
    running = REGISTRY.get_sample_value(
        "parlance_generator_requests_running", {"engine": "llama.cpp"}
    )
    assert running == 0
    result = await llama.generate(QUESTION, max_tokens=4)
    assert result.tokens() == 4


async def test_ignore_eos_generates_up_to_max_tokens(llama) -> None:  # type: ignore[no-untyped-def]
    result = await llama.generate("Say yes.", max_tokens=40, temperature=0.0, ignore_eos=True)
    assert result.finish() == pb.FINISH_REASON_LENGTH
    assert result.tokens() == 40


async def test_raw_prompt(llama) -> None:  # type: ignore[no-untyped-def]
    counted = await llama.stub.CountTokens(pb.CountTokensRequest(prompt="The sky is"))
    result = await llama.generate(prompt="The sky is", max_tokens=4, temperature=0.0)
    assert result.usage.prompt_tokens == counted.token_count
    assert result.tokens() == 4


async def test_unknown_model_is_not_found(llama) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llama.stub.Generate(llama.request(QUESTION, model="gpt-4o")).read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details().startswith("model: ")


async def test_context_window_bounds(test_settings_factory, serve_generator) -> None:  # type: ignore[no-untyped-def]
    """A small window keeps the long prompts cheap: max_tokens is clamped to the room the
    prompt leaves, and a prompt that alone fills the window is rejected naming `messages`."""
    small = await serve_generator(test_settings_factory(engine="llamacpp", n_ctx=128))
    try:
        prompt = "hello " * 120
        counted = await small.stub.CountTokens(pb.CountTokensRequest(prompt=prompt))
        room = 128 - counted.token_count
        assert 0 < room < 10
        result = await small.generate(prompt=prompt, max_tokens=500, ignore_eos=True)
        assert result.finish() == pb.FINISH_REASON_LENGTH
        assert result.tokens() == room

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await small.generate("hello " * 200, max_tokens=4)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("messages: ")
        # The OpenAI code the gateway answers with, which clients check to shorten the chat.
        assert openai_code_of(caught.value) == "context_length_exceeded"
    finally:
        await small.aclose()


async def test_out_of_range_parameter_names_it(llama) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llama.generate(QUESTION, temperature=3.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("temperature: ")
