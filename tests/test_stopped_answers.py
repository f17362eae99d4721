"""A streamed answer the client stops (closes the connection) is kept, as ChatGPT keeps it:
the question and the answer as far as it was sent, with finish_reason "cancelled".

The generator is the scripted engine at 20 words a second, so an answer is still streaming
when the client closes. What the gateway stores is the text of the chunks whose send had
completed when the stream was cut, so the client has read a prefix of it: the chunks it read
before closing, then possibly a few more that were already on their way. It is always
released text (a chunk never carries text that output moderation holds back), so it is a
beginning of the scripted reply and never the whole of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from parlance.testing import ALICE, MODEL, Stack, StackPool, iter_events, scripted_generator

SCRIPT = " ".join(f"word{i}" for i in range(400))


@pytest.fixture(scope="module")
def slow_stack(stacks: StackPool) -> Iterator[Stack]:
    stack = stacks.start("stopped", env={"generator": scripted_generator(SCRIPT, 20)})
    yield stack
    stack.stop()


def _stream_then_stop(stack: Stack, body: dict[str, Any], min_chars: int = 40) -> tuple[str, str]:
    """Streams a completion, closes the connection once `min_chars` of text came, and returns
    the conversation id and the text received."""
    received = ""
    conversation_id = None
    with httpx.stream(
        "POST",
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": MODEL, "stream": True, **body},
        headers=ALICE,
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        for chunk in iter_events(response):
            conversation_id = chunk.get("conversation_id")
            for choice in chunk["choices"]:
                assert choice["finish_reason"] is None, "the answer ended before the stop"
                received += choice["delta"].get("content") or ""
            if len(received) >= min_chars:
                break  # leaving the block closes the connection mid-stream
    assert conversation_id is not None
    return conversation_id, received


def _get(stack: Stack, path: str) -> httpx.Response:
    return httpx.get(f"{stack.gateway_url}{path}", headers=ALICE, timeout=30)


def _wait_for_messages(stack: Stack, conversation_id: str, count: int) -> list[dict[str, Any]]:
    """The active branch once it holds `count` messages (the stopped exchange is written in
    the background just after the stream is cut)."""
    deadline = time.monotonic() + 30
    while True:
        response = _get(stack, f"/v1/conversations/{conversation_id}")
        if response.status_code == 200 and len(response.json()["messages"]) >= count:
            return response.json()["messages"]
        assert response.status_code in (200, 404), response.text
        assert time.monotonic() < deadline, f"not stored: {response.status_code} {response.text}"
        time.sleep(0.2)


def _assert_stopped_answer(message: dict[str, Any], received: str) -> None:
    assert message["role"] == "assistant"
    assert message["finish_reason"] == "cancelled"
    stored = message["content"]
    # Everything the client read is kept, and nothing but chunks that were sent: a beginning
    # of the reply, never the whole of it.
    assert stored.startswith(received), (stored, received)
    assert SCRIPT.startswith(stored), stored
    assert len(stored) < len(SCRIPT)
    # The engine's cost until the cut, held-back tokens included, at least the words kept.
    assert message["usage"]["completion_tokens"] >= len(stored.split())
    assert message["usage"]["prompt_tokens"] > 0


def test_stopped_answer_of_a_new_conversation_is_stored(slow_stack: Stack) -> None:
    conversation_id, received = _stream_then_stop(
        slow_stack, {"messages": [{"role": "user", "content": "Count for me."}], "store": True}
    )
    assert received and SCRIPT.startswith(received)
    messages = _wait_for_messages(slow_stack, conversation_id, 2)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Count for me."
    _assert_stopped_answer(messages[1], received)
    listed = _get(slow_stack, "/v1/conversations").json()["data"]
    assert conversation_id in [c["id"] for c in listed]


def test_stopped_answer_continues_a_conversation_and_is_not_cached(slow_stack: Stack) -> None:
    created = httpx.post(
        f"{slow_stack.gateway_url}/v1/conversations", json={}, headers=ALICE, timeout=30
    )
    assert created.status_code == 200, created.text
    conversation_id = created.json()["id"]
    # Deterministic: it would be cached if it completed.
    body = {
        "messages": [{"role": "user", "content": "First question."}],
        "conversation_id": conversation_id,
        "temperature": 0,
    }
    streamed_id, received = _stream_then_stop(slow_stack, body)
    assert streamed_id == conversation_id
    messages = _wait_for_messages(slow_stack, conversation_id, 2)
    assert [m["content"] for m in messages[:1]] == ["First question."]
    _assert_stopped_answer(messages[1], received)

    # The conversation goes on below the stopped answer.
    follow = httpx.post(
        f"{slow_stack.gateway_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Second question."}],
            "conversation_id": conversation_id,
            "max_tokens": 3,
        },
        headers=ALICE,
        timeout=60,
    )
    assert follow.status_code == 200, follow.text
    messages = _wait_for_messages(slow_stack, conversation_id, 4)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == "Second question."
    assert messages[2]["parent_id"] == messages[1]["id"]
    assert messages[3]["finish_reason"] == "length"

    # A stopped answer was never cached: the same deterministic request (same context and
    # sampling) generates again.
    with httpx.stream(
        "POST",
        f"{slow_stack.gateway_url}/v1/chat/completions",
        json={"model": MODEL, "stream": True, "messages": body["messages"], "temperature": 0},
        headers=ALICE,
        timeout=60,
    ) as again:
        assert again.status_code == 200
        assert again.headers["x-cache"] == "miss"
