"""The official OpenAI SDK against the running stack: plain and streamed completions."""

from __future__ import annotations

import openai
import pytest

from parlance.testing import ALICE_KEY, MODEL, Stack

NO_CACHE = {"Cache-Control": "no-cache"}
HELLO = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=ALICE_KEY, max_retries=0)


def test_plain_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=40, temperature=0, extra_headers=NO_CACHE
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_completion_matches_plain(client: openai.OpenAI) -> None:
    params = {"model": MODEL, "messages": HELLO, "max_tokens": 30, "temperature": 0}
    plain = client.chat.completions.create(**params, extra_headers=NO_CACHE)
    stream = client.chat.completions.create(
        **params, stream=True, stream_options={"include_usage": True}, extra_headers=NO_CACHE
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.model == MODEL for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    # The usage chunk comes last, with no choices; the others carry usage null.
    assert chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])
    usage = chunks[-1].usage
    assert usage is not None
    assert text == plain.choices[0].message.content
    assert finish == [plain.choices[0].finish_reason]
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens


def test_stream_without_usage_option_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=5, stream=True, extra_headers=NO_CACHE
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=3,
        n=1,
        extra_headers=NO_CACHE,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=4,
        extra_headers=NO_CACHE,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4


def test_stop_string(client: openai.OpenAI) -> None:
    params = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to ten in words."}],
        "max_tokens": 40,
        "temperature": 0,
    }
    free = client.chat.completions.create(**params, extra_headers=NO_CACHE)
    text = free.choices[0].message.content or ""
    # Stop at a piece of the greedy answer itself: the cut answer is what came before it.
    tokens = text.split()
    assert len(tokens) >= 4, text
    stop = tokens[len(tokens) // 2]
    expected = text[: text.index(stop)]
    cut = client.chat.completions.create(**params, stop=[stop], extra_headers=NO_CACHE)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == expected
    assert cut.usage.completion_tokens < free.usage.completion_tokens


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    params = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a fun fact."}],
        "max_tokens": 20,
        "temperature": 1.0,
        "seed": 1234,
    }
    first = client.chat.completions.create(**params, extra_headers=NO_CACHE)
    second = client.chat.completions.create(**params, extra_headers=NO_CACHE)
    assert first.choices[0].message.content == second.choices[0].message.content


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


def test_bad_key_is_401(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.body["code"] == "invalid_api_key"
