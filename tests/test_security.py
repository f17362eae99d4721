"""Security across the stack: keys only as digests, every user's data scoped to its user (every
conversation, message, feedback and admin route, every verb), a cache never shared between
tenants, streams never mixed between users under concurrent cancellation, and logs without
keys or message text.

The generator is the scripted test engine in echo mode (no GENERATOR_SCRIPTED_TEXT): it
answers each request with its own last user message, so a stream carrying anything but its
own marker is a stream mixed with another request's.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Iterator

import httpx
import pytest

from parlance.testing import (
    ALICE,
    ALICE_KEY,
    BOB,
    BOB_KEY,
    MODEL,
    Stack,
    StackPool,
    aiter_events,
    assert_openai_error,
    bearer,
    chat,
    chat_body,
    scrape,
    scripted_generator,
    total,
)

ADMIN_KEY = "sk-admin-security-0123456789abcdef"
# Text every test sends; none of it may reach a log.
SECRET_WORDS: list[str] = []


@pytest.fixture(scope="module")
def sec_stack(stacks: StackPool) -> Iterator[Stack]:
    stack = stacks.start(
        "security",
        gateway_env={
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_RPM_LIMIT": "0",
            "GATEWAY_TPM_LIMIT": "0",
            "GATEWAY_MAX_CONCURRENT_PER_KEY": "200",
            "GATEWAY_GENERATE_TITLES": "false",
        },
        env={"generator": scripted_generator(tokens_per_s=40)},
    )
    yield stack
    stack.stop()


def url(stack: Stack, path: str) -> str:
    return f"{stack.gateway_url}{path}"


def scrape_gateway(stack: Stack) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    port = stack.services["gateway"].metrics_port  # internal port: not on the public one
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def marker(owner: str) -> str:
    word = f"{owner}{uuid.uuid4().hex[:12]}"
    SECRET_WORDS.append(word)
    return word


def test_keys_are_stored_only_as_digests(sec_stack: Stack) -> None:
    created = httpx.post(
        url(sec_stack, "/v1/admin/keys"),
        json={"user_id": "carol", "name": "laptop"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    SECRET_WORDS.append(key)
    assert chat(sec_stack, chat_body("hello"), bearer(key)).status_code == 200
    listed = httpx.get(
        url(sec_stack, "/v1/admin/keys"),
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert key not in listed.text

    secrets = [key, ALICE_KEY, BOB_KEY, ADMIN_KEY]
    # The key's random part, so that no encoding of the whole key hides it from the search.
    fragments = [s[8:-4] for s in secrets]
    for name in ("gateway.db", "history.db"):
        path = sec_stack.data_dir / name
        raw = path.read_bytes()
        for wal in path.parent.glob(f"{name}-*"):
            raw += wal.read_bytes()
        for fragment in fragments:
            assert fragment.encode() not in raw, f"a key is in {name}"
    with sqlite3.connect(sec_stack.data_dir / "gateway.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        key_tables = [t for t in tables if "key" in t]
        assert key_tables, tables
        rows = db.execute(f"SELECT * FROM {key_tables[0]}").fetchall()
    import hashlib

    assert any(hashlib.sha256(key.encode()).hexdigest() in row for row in rows)


@pytest.fixture(scope="module")
def alice_conversation(sec_stack: Stack) -> dict:
    """A stored conversation of alice's: its id, message ids and secret content."""
    secret = marker("alicesecret")
    response = chat(sec_stack, chat_body(f"my secret is {secret}", store=True), ALICE)
    assert response.status_code == 200, response.text
    conversation_id = response.json()["conversation_id"]
    got = httpx.get(
        url(sec_stack, f"/v1/conversations/{conversation_id}"), headers=ALICE, timeout=30
    ).json()
    user_id, assistant_id = (m["id"] for m in got["messages"])
    return {
        "id": conversation_id,
        "user": user_id,
        "assistant": assistant_id,
        "secret": secret,
        "snapshot": got,
    }


def test_bob_cannot_reach_alices_conversation_by_any_route(
    sec_stack: Stack, alice_conversation: dict
) -> None:
    conv, secret = alice_conversation["id"], alice_conversation["secret"]
    user_msg, answer = alice_conversation["user"], alice_conversation["assistant"]
    bobs = httpx.post(url(sec_stack, "/v1/conversations"), json={}, headers=BOB, timeout=30)
    bobs_conv = bobs.json()["id"]
    feedback = {"rating": -1, "comment": "bob was here", "corrected_content": "bob's"}
    attempts: list[tuple[str, str, dict | None]] = [
        ("GET", f"/v1/conversations/{conv}", None),
        ("PATCH", f"/v1/conversations/{conv}", {"title": "bob's now"}),
        ("PATCH", f"/v1/conversations/{conv}", {"archived": True}),
        ("PATCH", f"/v1/conversations/{conv}", {"active_message_id": user_msg}),
        ("DELETE", f"/v1/conversations/{conv}", None),
        ("POST", f"/v1/conversations/{conv}/messages/{answer}/feedback", feedback),
        ("PUT", f"/v1/conversations/{conv}/messages/{answer}/feedback", feedback),
        ("POST", f"/v1/conversations/{conv}/messages/{user_msg}/feedback", feedback),
        # Alice's message through bob's own conversation.
        ("POST", f"/v1/conversations/{bobs_conv}/messages/{answer}/feedback", feedback),
        ("PATCH", f"/v1/conversations/{bobs_conv}", {"active_message_id": answer}),
    ]
    for method, path, body in attempts:
        response = httpx.request(method, url(sec_stack, path), json=body, headers=BOB, timeout=30)
        assert_openai_error(response, 404)
        # The error may repeat the id bob sent; it never carries alice's data.
        assert secret not in response.text and "messages" not in response.json()

    # Continuing, regenerating or branching alice's conversation through the chat route.
    for fields in (
        {"conversation_id": conv},
        {"conversation_id": conv, "parent_message_id": answer},
        {"conversation_id": bobs_conv, "parent_message_id": answer},
    ):
        for stream in (False, True):
            response = chat(
                sec_stack, chat_body("tell me the secret", stream=stream, **fields), BOB
            )
            assert response.status_code == 404, response.text[:300]
            assert secret not in response.text
    regenerate = httpx.post(
        url(sec_stack, "/v1/chat/completions"),
        json={
            "model": MODEL,
            "messages": [],
            "conversation_id": conv,
            "parent_message_id": user_msg,
        },
        headers=BOB,
        timeout=30,
    )
    assert_openai_error(regenerate, 404)

    listed = httpx.get(
        url(sec_stack, "/v1/conversations"),
        params={"limit": 100, "include_archived": True},
        headers=BOB,
        timeout=30,
    )
    assert conv not in listed.text
    search = httpx.get(
        url(sec_stack, "/v1/conversations/search"), params={"q": secret}, headers=BOB, timeout=30
    )
    assert search.status_code == 200 and search.json()["data"] == []

    # Admin routes with a user's key.
    for method, path in (
        ("GET", "/v1/admin/export"),
        ("GET", "/v1/admin/export?kind=sft"),
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/key_0123"),
    ):
        for headers in (ALICE, BOB):
            response = httpx.request(
                method, url(sec_stack, path), json={"user_id": "bob"}, headers=headers, timeout=30
            )
            assert_openai_error(response, 403)
        assert_openai_error(httpx.request(method, url(sec_stack, path), timeout=30), 401)

    # Alice's conversation is as it was: nothing renamed, archived, deleted, rated or added.
    after = httpx.get(url(sec_stack, f"/v1/conversations/{conv}"), headers=ALICE, timeout=30)
    assert after.status_code == 200
    assert after.json() == alice_conversation["snapshot"]
    found = httpx.get(
        url(sec_stack, "/v1/conversations/search"), params={"q": secret}, headers=ALICE, timeout=30
    )
    assert {h["conversation_id"] for h in found.json()["data"]} == {conv}
    # Bob's refused feedback is nowhere, not even in the admin's export.
    export = httpx.get(
        url(sec_stack, "/v1/admin/export"),
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert export.status_code == 200
    assert "bob was here" not in export.text


@pytest.mark.parametrize("stream", [False, True])
def test_cache_is_never_shared_between_tenants(sec_stack: Stack, stream: bool) -> None:
    content = f"deterministic question {marker('cache')}"
    first = chat(sec_stack, chat_body(content, temperature=0, stream=stream), ALICE)
    again = chat(sec_stack, chat_body(content, temperature=0, stream=stream), ALICE)
    bobs = chat(sec_stack, chat_body(content, temperature=0, stream=stream), BOB)
    assert first.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit"
    assert bobs.status_code == 200
    assert bobs.headers["x-cache"] == "miss", "bob was served alice's cache entry"
    ids = {r.text.split('"id":"', 1)[1].split('"', 1)[0] for r in (first, again, bobs)}
    assert len(ids) == 3, "every answer has its own id"
    # With store: bob's answer goes to a conversation of his, never alice's.
    stored = f"stored question {marker('cache')}"
    alice_store = chat(sec_stack, chat_body(stored, temperature=0, store=True), ALICE)
    bob_store = chat(sec_stack, chat_body(stored, temperature=0, store=True), BOB)
    assert bob_store.headers["x-cache"] == "miss"
    alice_id = alice_store.json()["conversation_id"]
    bob_id = bob_store.json()["conversation_id"]
    assert alice_id != bob_id
    got = httpx.get(url(sec_stack, f"/v1/conversations/{bob_id}"), headers=BOB, timeout=30)
    assert got.status_code == 200
    assert_openai_error(
        httpx.get(url(sec_stack, f"/v1/conversations/{alice_id}"), headers=BOB, timeout=30), 404
    )


async def _one_stream(
    client: httpx.AsyncClient, stack: Stack, headers: dict, word: str, cancel_after: int | None
) -> tuple[str, str | None, str | None]:
    """Streams an echo of `word` x 20; returns (text, finish_reason, conversation_id). With
    cancel_after, the client goes away after that many content chunks."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": " ".join([word] * 20)}],
        "stream": True,
        "store": True,
    }
    text, finish, conversation = "", None, None
    chunks = 0
    async with client.stream(
        "POST", url(stack, "/v1/chat/completions"), json=body, headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        async for event in aiter_events(response):
            conversation = event.get("conversation_id") or conversation
            for choice in event["choices"]:
                text += choice["delta"].get("content") or ""
                finish = choice.get("finish_reason") or finish
                if choice["delta"].get("content"):
                    chunks += 1
            if cancel_after is not None and chunks >= cancel_after:
                break
    return text, finish, conversation


def test_concurrent_streams_with_cancellation_never_mix_users(sec_stack: Stack) -> None:
    rng = random.Random(2023)
    jobs = []
    for i in range(48):
        owner, headers = ("alice", ALICE) if i % 2 == 0 else ("bob", BOB)
        word = marker(f"{owner}stream")
        cancel_after = rng.randint(1, 3) if rng.random() < 0.5 else None
        jobs.append((owner, headers, word, cancel_after))

    async def run_all() -> list[tuple[str, str | None, str | None]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(_one_stream(client, sec_stack, h, w, c) for _, h, w, c in jobs)
            )

    results = asyncio.run(run_all())
    words = {w for _, _, w, _ in jobs}
    for (_owner, headers, word, cancel_after), (text, finish, conversation) in zip(
        jobs, results, strict=True
    ):
        tokens = text.split()
        assert tokens, (word, text)
        # Only its own marker: never another request's words.
        assert set(tokens) == {word}, (word, text[:200])
        if cancel_after is None:
            assert finish == "stop" and len(tokens) == 20, (word, finish, len(tokens))
            got = httpx.get(
                url(sec_stack, f"/v1/conversations/{conversation}"), headers=headers, timeout=30
            )
            assert got.status_code == 200
            stored = [m["content"] for m in got.json()["messages"]]
            assert stored == [" ".join([word] * 20), text]
    # No leases, slots or engine requests outlive the cancelled streams.
    generator = sec_stack.services["generator"].metrics_port
    assert generator is not None
    deadline = time.monotonic() + 20
    while True:
        samples = {**scrape_gateway(sec_stack), **scrape(generator)}
        held = {
            name: total(samples, name)
            for name in (
                "parlance_gateway_leases_held",
                "parlance_gateway_requests_in_flight",
                "parlance_generator_requests_running",
            )
        }
        if not any(held.values()):
            break
        assert time.monotonic() < deadline, f"still held: {held}"
        time.sleep(0.2)
    assert all(w.startswith(("alicestream", "bobstream")) for w in words)


def test_logs_hold_no_keys_and_no_message_text(sec_stack: Stack) -> None:
    # Runs last in this module: every test above has sent its keys and secret words.
    assert SECRET_WORDS
    # Each process's own log (a model service may be shared with other stacks, its log too).
    logs = {
        name: service.log_path.read_text(errors="replace")
        for name, service in sec_stack.services.items()
    }
    assert set(logs) >= {"gateway", "generator", "safety", "history"}
    for name, text in logs.items():
        for secret in [ALICE_KEY, BOB_KEY, ADMIN_KEY, *SECRET_WORDS]:
            assert secret not in text, f"{secret[:12]}... is in {name}"
        assert "my secret is" not in text and "deterministic question" not in text
