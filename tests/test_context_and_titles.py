"""Stored conversations trimmed to the model's window, and titles written by the model, through a
stack whose generator has a 256-token context (llama.cpp, SmolLM2)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest

from parlance.gateway.clients import HistoryClient
from parlance.gateway.titles import apply_title, provisional_title
from parlance.generator.v1 import generator_pb2, generator_pb2_grpc
from parlance.history.v1 import history_pb2, history_pb2_grpc
from parlance.testing import ALICE, MODEL, Stack, StackPool, chat, scrape, total

N_CTX = 256
MAX_TOKENS = 16
SECRET = "PELICAN"


@pytest.fixture(scope="module")
def small(stacks: StackPool) -> Iterator[Stack]:
    stack = stacks.start("small-ctx", env={"generator": {"GENERATOR_N_CTX": str(N_CTX)}})
    yield stack
    stack.stop()


def _get(stack: Stack, path: str) -> httpx.Response:
    return httpx.get(f"{stack.gateway_url}{path}", headers=ALICE, timeout=30)


def _count(stack: Stack, messages: list[tuple[str, str]]) -> int:
    port = stack.services["generator"].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = generator_pb2_grpc.GeneratorServiceStub(channel).CountTokens(
            generator_pb2.CountTokensRequest(
                model=MODEL,
                chat=generator_pb2.ChatInput(
                    messages=[generator_pb2.ChatMessage(role=r, content=c) for r, c in messages]
                ),
            ),
            timeout=30,
        )
    return int(reply.token_count)


def _seed(stack: Stack, conversation_id: str, messages: list[tuple[str, str]]) -> None:
    port = stack.services["history"].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        history_pb2_grpc.HistoryServiceStub(channel).AppendMessages(
            history_pb2.AppendMessagesRequest(
                user_id="alice",
                conversation_id=conversation_id,
                create_if_missing=True,
                title="seeded",
                messages=[
                    history_pb2.Message(id=f"msg_{uuid.uuid4().hex}", role=r, content=c)
                    for r, c in messages
                ],
            ),
            timeout=10,
        )


def _long_conversation() -> list[tuple[str, str]]:
    messages = [
        ("system", "You are a helpful assistant."),
        ("user", f"Remember this: the secret word is {SECRET}."),
        ("assistant", f"Understood, the secret word is {SECRET}."),
    ]
    for i in range(1, 16):
        messages += [
            ("user", f"Tell me something about the number {i}."),
            ("assistant", f"The number {i} comes after {i - 1} and before {i + 1}."),
        ]
    return messages


def test_long_conversation_is_trimmed_oldest_first(small: Stack) -> None:
    stored = _long_conversation()
    new = ("user", "Which number did we talk about last?")
    budget = N_CTX - MAX_TOKENS
    assert _count(small, [*stored, new]) >= N_CTX  # the whole conversation cannot be sent

    # Sent whole (no stored conversation to trim), the generator refuses it.
    inline = chat(
        small,
        {
            "model": MODEL,
            "messages": [{"role": r, "content": c} for r, c in [*stored, new]],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        },
    )
    assert inline.status_code == 400, inline.text
    assert inline.json()["error"]["param"] == "messages"

    conversation_id = f"conv_{uuid.uuid4().hex}"
    _seed(small, conversation_id, stored)
    response = chat(
        small,
        {
            "model": MODEL,
            "messages": [{"role": new[0], "content": new[1]}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "conversation_id": conversation_id,
        },
    )
    assert response.status_code == 200, response.text
    prompt_tokens = response.json()["usage"]["prompt_tokens"]
    assert prompt_tokens <= budget

    # The prompt the model saw is the system message, a suffix of the stored messages starting
    # at a question, and the new message: the oldest messages were dropped, and no more than
    # needed (keeping one more exchange would not fit).
    system, rest = stored[0], stored[1:]
    cuts = [i for i, (role, _) in enumerate(rest) if role == "user"]
    counts = {cut: _count(small, [system, *rest[cut:], new]) for cut in cuts}
    matching = [cut for cut, tokens in counts.items() if tokens == prompt_tokens]
    assert len(matching) == 1, (prompt_tokens, counts)
    cut = matching[0]
    assert cut > 0
    assert all(SECRET not in content for _, content in rest[cut:])
    assert counts[cut - 2] > budget

    # Trimming only shapes the prompt: the conversation keeps every message.
    got = _get(small, f"/v1/conversations/{conversation_id}").json()
    assert len(got["messages"]) == len(stored) + 2
    assert got["messages"][0]["content"] == stored[0][1]
    assert got["messages"][-2]["content"] == new[1]


def test_conversation_that_fits_is_sent_whole(small: Stack) -> None:
    stored = _long_conversation()[:5]
    new = ("user", "And the number 3?")
    conversation_id = f"conv_{uuid.uuid4().hex}"
    _seed(small, conversation_id, stored)
    response = chat(
        small,
        {
            "model": MODEL,
            "messages": [{"role": new[0], "content": new[1]}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "conversation_id": conversation_id,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == _count(small, [*stored, new])


def _titles_done(stack: Stack) -> float:
    samples = scrape(stack.services["gateway"].metrics_port)
    return total(samples, "parlance_gateway_titles_total")


def _wait_for_titles(stack: Stack, count: float, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _titles_done(stack) < count:
        assert time.monotonic() < deadline, "no title task finished"
        time.sleep(0.2)


def test_new_conversation_gets_a_model_title(small: Stack) -> None:
    question = "How do I bake sourdough bread at home?"
    before = _titles_done(small)
    response = chat(
        small,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 24,
            "store": True,
        },
    )
    assert response.status_code == 200, response.text
    conversation_id = response.json()["conversation_id"]
    provisional = provisional_title(question)
    _wait_for_titles(small, before + 1)
    got = _get(small, f"/v1/conversations/{conversation_id}").json()
    assert got["title"] != provisional and got["title"].strip()
    assert len(got["title"]) <= 60 and "\n" not in got["title"]
    # The title request is not part of the conversation.
    assert [m["role"] for m in got["messages"]] == ["user", "assistant"]
    samples = scrape(small.services["gateway"].metrics_port)
    assert samples.get('parlance_gateway_titles_total{outcome="set"}', 0) >= 1


def test_renamed_conversation_keeps_the_users_title(small: Stack) -> None:
    before = _titles_done(small)
    response = chat(
        small,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24,
            "store": True,
        },
    )
    assert response.status_code == 200, response.text
    conversation_id = response.json()["conversation_id"]
    renamed = httpx.patch(
        f"{small.gateway_url}/v1/conversations/{conversation_id}",
        json={"title": "My trip planning"},
        headers=ALICE,
        timeout=30,
    )
    assert renamed.status_code == 200, renamed.text
    _wait_for_titles(small, before + 1)
    got = _get(small, f"/v1/conversations/{conversation_id}").json()
    assert got["title"] == "My trip planning"


def test_apply_title_only_replaces_the_provisional_title(small: Stack) -> None:
    """The step that writes the model's title, against the real history service: whatever the
    timing, a title the user chose is never replaced."""

    def create(title: str) -> str:
        response = httpx.post(
            f"{small.gateway_url}/v1/conversations",
            json={"title": title},
            headers=ALICE,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    untouched, renamed = create("Provisional"), create("Provisional")
    httpx.patch(
        f"{small.gateway_url}/v1/conversations/{renamed}",
        json={"title": "Mine"},
        headers=ALICE,
        timeout=30,
    ).raise_for_status()

    async def apply() -> tuple[bool, bool]:
        client = HistoryClient(f"127.0.0.1:{small.services['history'].grpc_port}", 10.0, 1)
        try:
            return (
                await apply_title(client, "alice", untouched, "Provisional", "Model title"),
                await apply_title(client, "alice", renamed, "Provisional", "Model title"),
            )
        finally:
            await client.close()

    assert asyncio.run(apply()) == (True, False)
    assert _get(small, f"/v1/conversations/{untouched}").json()["title"] == "Model title"
    assert _get(small, f"/v1/conversations/{renamed}").json()["title"] == "Mine"
