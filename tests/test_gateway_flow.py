"""The request flow through the real services: moderation, cache, history, limits, errors."""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest

from parlance.history.v1 import history_pb2, history_pb2_grpc
from parlance.testing import (
    ALICE,
    BOB,
    MODEL,
    Stack,
    assert_openai_error,
    chat,
    read_events,
    scrape,
    start_extra_gateway,
    total,
)

OFFENSIVE = "You are a stupid worthless idiot and a moron."


def test_flagged_prompt_is_refused_before_generation(stack: Stack) -> None:
    generator_metrics = stack.services["generator"].metrics_port
    assert generator_metrics is not None
    before = scrape(generator_metrics)
    response = chat(
        stack,
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": OFFENSIVE},
                {"role": "assistant", "content": "Sorry?"},
                {"role": "user", "content": "Answer me."},
            ],
        },
    )
    error = assert_openai_error(response, 400, code="content_filter")
    assert error["param"] == "messages"
    after = scrape(generator_metrics)
    name = "parlance_generator_requests_total"
    assert total(after, name) == total(before, name), "the generator must not be called"


def test_cache_hit_on_repeated_deterministic_request(stack: Stack) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 12,
    }
    first = chat(stack, body)
    second = chat(stack, body)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    # Another tenant asking the same never gets alice's entry.
    assert chat(stack, body, BOB).headers["x-cache"] == "miss"
    # A sampled request is never cached.
    sampled = chat(stack, {**body, "temperature": 0.8})
    assert sampled.headers["x-cache"] == "bypass"


def test_cached_answer_replays_as_a_stream(stack: Stack) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello to Bob."}],
        "seed": 7,
        "max_tokens": 10,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    live = chat(stack, body)
    replay = chat(stack, body)
    assert (live.headers["x-cache"], replay.headers["x-cache"]) == ("miss", "hit")
    live_events, replay_events = read_events(live), read_events(replay)
    strip = lambda evs: [(e["choices"], e["usage"]) for e in evs]  # noqa: E731
    assert strip(replay_events) == strip(live_events)


def test_store_true_keeps_the_exchange_in_history(stack: Stack) -> None:
    response = chat(
        stack,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Remember the word banana."}],
            "max_tokens": 10,
            "store": True,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    conversation_id = body["conversation_id"]
    follow_up = chat(
        stack,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Which word did I ask you to remember?"}],
            "max_tokens": 10,
            "conversation_id": conversation_id,
        },
    )
    assert follow_up.status_code == 200, follow_up.text
    history_port = stack.services["history"].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{history_port}") as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        stored = stub.GetConversation(
            history_pb2.GetConversationRequest(user_id="alice", conversation_id=conversation_id)
        )
        roles = [m.role for m in stored.messages]
        assert roles == ["user", "assistant", "user", "assistant"]
        assert stored.messages[0].content == "Remember the word banana."
        assert stored.messages[1].content == body["choices"][0]["message"]["content"]
        assert stored.messages[1].usage.completion_tokens == body["usage"]["completion_tokens"]
        assert stored.messages[3].content == follow_up.json()["choices"][0]["message"]["content"]
        # Bob cannot read it.
        with pytest.raises(grpc.RpcError) as info:
            stub.GetConversation(
                history_pb2.GetConversationRequest(user_id="bob", conversation_id=conversation_id)
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Nor continue it through the gateway.
    foreign = chat(
        stack,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "conversation_id": conversation_id,
        },
        BOB,
    )
    assert_openai_error(foreign, 404)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, None, "model"),
        ({"model": MODEL}, 400, None, "messages"),
        ({"model": MODEL, "messages": []}, 400, None, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None, None),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 7},
            400,
            None,
            "temperature",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9},
            400,
            None,
            "max_tokens",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 1000},
            400,
            None,
            "n",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{}]},
            400,
            None,
            "tools",
        ),
        (
            {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
            404,
            "model_not_found",
            "model",
        ),
    ],
)
def test_invalid_requests_get_openai_errors(
    stack: Stack, body: dict, status: int, code: str | None, param: str | None
) -> None:
    error = assert_openai_error(chat(stack, body), status, code=code)
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)


def test_malformed_json_and_oversized_bodies(stack: Stack) -> None:
    url = f"{stack.gateway_url}/v1/chat/completions"
    headers = {**ALICE, "Content-Type": "application/json"}
    assert_openai_error(httpx.post(url, content=b'{"model": ', headers=headers), 400)
    assert_openai_error(httpx.post(url, content=b"\xff\xfe\x00", headers=headers), 400)
    huge = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 2_000_000}]})
    assert_openai_error(httpx.post(url, content=huge, headers=headers), 413)
    # Under the byte limit but over the character limit of the input.
    long = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 60_000}]}
    assert_openai_error(chat(stack, long), 400, code="context_length_exceeded")
    # Under both, over the model's window in tokens: the generator's refusal keeps its code.
    over = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 3_000}]}
    error = assert_openai_error(chat(stack, over), 400, code="context_length_exceeded")
    assert error["param"] == "messages" and "context window" in error["message"]


def test_missing_key_is_401(stack: Stack) -> None:
    response = httpx.post(f"{stack.gateway_url}/v1/chat/completions", json={})
    assert_openai_error(response, 401, code="invalid_api_key")


RPM = 12


def test_rpm_limit_answers_429_then_recovers(stack: Stack) -> None:
    # 12 a minute: one request is given back every 5 s, so the 13th is refused as long as the
    # first 13 take under 5 s (at 60 a minute a busy machine's 61 requests could take 1 s).
    limited = start_extra_gateway(stack, {"GATEWAY_RPM_LIMIT": str(RPM)})
    try:
        url = f"http://127.0.0.1:{limited.http_port}/v1/chat/completions"
        # Requests for an unknown model are cheap, and they count against the limit too.
        body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(headers=ALICE, timeout=30) as client:
            statuses = [client.post(url, json=body).status_code for _ in range(RPM)]
            assert statuses == [404] * RPM
            refused = client.post(url, json=body)
            error = assert_openai_error(refused, 429, code="rate_limit_exceeded")
            assert "rate limit" in error["message"].lower()
            retry_after = int(refused.headers["retry-after"])
            assert 1 <= retry_after <= 60 // RPM
            assert refused.headers["x-ratelimit-limit-requests"] == str(RPM)
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"
            # Bob has his own budget.
            assert client.post(url, json=body, headers=BOB).status_code == 404
            time.sleep(retry_after)
            recovered = client.post(url, json=body)
            assert recovered.status_code == 404
            assert "x-ratelimit-remaining-requests" in recovered.headers
    finally:
        limited.stop()


def test_regenerate_and_edit_branch_the_conversation(stack: Stack) -> None:
    url = f"{stack.gateway_url}/v1/conversations"
    first = chat(
        stack,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Name a fruit."}],
            "max_tokens": 6,
            "store": True,
        },
    )
    conversation_id = first.json()["conversation_id"]
    path = httpx.get(f"{url}/{conversation_id}", headers=ALICE).json()["messages"]
    user_message, answer = path
    # Regenerate: no new messages, a second answer below the same user message.
    again = chat(
        stack,
        {
            "model": MODEL,
            "messages": [],
            "max_tokens": 6,
            "temperature": 1.0,
            "conversation_id": conversation_id,
            "parent_message_id": user_message["id"],
        },
    )
    assert again.status_code == 200, again.text
    path = httpx.get(f"{url}/{conversation_id}", headers=ALICE).json()["messages"]
    assert [m["role"] for m in path] == ["user", "assistant"]
    assert path[1]["id"] != answer["id"]
    assert (path[1]["sibling_index"], path[1]["sibling_count"]) == (2, 2)
    assert path[1]["content"] == again.json()["choices"][0]["message"]["content"]
    # Edit: a new first user message (a new root) with its own answer.
    edited = chat(
        stack,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Name a vegetable."}],
            "max_tokens": 6,
            "conversation_id": conversation_id,
            "parent_message_id": "",
        },
    )
    assert edited.status_code == 200, edited.text
    path = httpx.get(f"{url}/{conversation_id}", headers=ALICE).json()["messages"]
    assert path[0]["content"] == "Name a vegetable."
    assert (path[0]["sibling_index"], path[0]["sibling_count"]) == (2, 2)
    # Without a conversation, parent_message_id means nothing: refused.
    refused = chat(
        stack,
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "parent_message_id": "m"},
    )
    assert_openai_error(refused, 400)
