"""Faults in the middle of answers: each service and Redis killed (-9) or frozen (SIGSTOP, a
dependency slower than its deadline) while a stream is open, then brought back.

The policies under test (ARCHITECTURE.md): the stream never hangs (an error event ends it when
headers are gone, 503 + Retry-After before they are), safety fails closed, history writes wait
in the gateway's outbox and land later, Redis falls back to per-process limits; everything
recovers on its own; every exchange completed with `store: true` ends up in history.

The generator is the scripted test engine at 20 tokens/s, so an answer takes ~3 s and there is
time to break things in the middle of it. Deadlines and keepalive are set short so that the
tests wait seconds, not the production defaults.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis as redis_client
from helpers import (
    ALICE_KEY,
    BOB_KEY,
    MODEL,
    RedisProcess,
    Stack,
    start_extra_gateway,
    start_stack,
    wait_until,
)

ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
# 60 plain words: the scripted engine sends them one token each.
SCRIPT = " ".join(["steady"] * 20 + ["answers"] * 20 + ["arrive"] * 20)
WORDS = len(SCRIPT.split())
# Long enough for a frozen dependency to be noticed, short enough for CI.
HANG_BOUND_S = 15.0


@dataclass
class Stream:
    """What a client saw of one streamed answer."""

    status: int = 0
    conversation_id: str | None = None
    text: str = ""
    finish_reason: str | None = None
    error: dict | None = None
    done: bool = False
    broken: bool = False
    elapsed_s: float = 0.0
    events: list[dict] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.done and self.finish_reason in ("stop", "length") and self.error is None


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis: RedisProcess) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("midstream"),
        redis.url,
        gateway_env={
            "GATEWAY_SAFETY_TIMEOUT_S": "1",
            "GATEWAY_HISTORY_TIMEOUT_S": "1",
            "GATEWAY_GENERATOR_IDLE_TIMEOUT_S": "2",
            "GATEWAY_GRPC_KEEPALIVE_S": "1",
            "GATEWAY_GRPC_KEEPALIVE_TIMEOUT_S": "1",
            "GATEWAY_LEASE_TTL_S": "3",
            "GATEWAY_SHUTDOWN_GRACE_S": "2",
            "GATEWAY_GENERATE_TITLES": "false",
        },
        env={
            "generator": {
                "GENERATOR_ENGINE": "scripted",
                "GENERATOR_SCRIPTED_TEXT": SCRIPT,
                "GENERATOR_SCRIPTED_TOKENS_PER_S": "20",
            }
        },
    )
    yield stack
    stack.stop()  # resumes paused services first


def body(stream: bool = True, store: bool = True, **extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me something."}],
        "stream": stream,
        "store": store,
        **extra,
    }


def stream_answer(
    url: str,
    key: str = ALICE_KEY,
    on_first_text=None,  # type: ignore[no-untyped-def]
    timeout_s: float = 60.0,
    **extra: object,
) -> Stream:
    """Streams one answer and records what arrived; `on_first_text` runs once, mid-stream."""
    seen = Stream()
    started = time.monotonic()
    try:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body(**extra),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
        ) as response:
            seen.status = response.status_code
            if response.status_code != 200:
                response.read()
                seen.error = response.json().get("error")
                return seen
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    seen.done = True
                    continue
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                seen.events.append(event)
                if "error" in event:
                    seen.error = event["error"]
                    continue
                seen.conversation_id = seen.conversation_id or event.get("conversation_id")
                for choice in event.get("choices", []):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        if not seen.text and on_first_text is not None:
                            on_first_text()
                        seen.text += content
                    if choice.get("finish_reason"):
                        seen.finish_reason = choice["finish_reason"]
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
        seen.broken = True
    finally:
        seen.elapsed_s = time.monotonic() - started
    return seen


def chat(url: str, store: bool = False, timeout_s: float = 60.0) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=body(stream=False, store=store),
        headers=ALICE,
        timeout=timeout_s,
    )


def readyz(stack: Stack) -> dict:
    return httpx.get(f"{stack.gateway_url}/readyz", timeout=10).json()


def wait_healthy(stack: Stack) -> None:
    wait_until(lambda: chat(stack.gateway_url, timeout_s=10).status_code == 200)


def stored_answer(stack: Stack, conversation_id: str) -> str | None:
    response = httpx.get(
        f"{stack.gateway_url}/v1/conversations/{conversation_id}", headers=ALICE, timeout=10
    )
    if response.status_code != 200:
        return None
    messages = response.json()["messages"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return answers[-1] if answers else None


def assert_ended_with_503(seen: Stream) -> None:
    """Headers were out: the failure arrives as an OpenAI error event, then [DONE]."""
    assert not seen.broken, seen
    assert seen.error is not None, seen
    assert seen.error["code"] == "service_unavailable", seen.error
    assert seen.done, "the stream must still end with [DONE]"
    assert seen.finish_reason is None
    assert seen.elapsed_s < HANG_BOUND_S, f"took {seen.elapsed_s:.1f} s"


# --- killed (-9) mid-stream ----------------------------------------------------------------


def test_redis_killed_mid_stream(stack: Stack, redis: RedisProcess) -> None:
    """The answer finishes and is stored; limits fall back per process; Redis comes back."""
    seen = stream_answer(stack.gateway_url, on_first_text=redis.kill)
    assert seen.completed, seen
    assert len(seen.text.split()) == WORDS
    try:
        assert chat(stack.gateway_url).status_code == 200
        assert "unavailable" in readyz(stack)["dependencies"]["redis"]
    finally:
        redis.start()
    wait_until(lambda: readyz(stack)["dependencies"]["redis"] == "ok")
    # Back on Redis: a lease taken now is visible in Redis while the answer streams.
    client = redis_client.Redis.from_url(redis.url)
    leases: list[int] = []

    def count_leases() -> None:
        leases.append(sum(client.zcard(k) for k in client.scan_iter("parlance:lease:*")))

    again = stream_answer(stack.gateway_url, on_first_text=count_leases)
    assert again.completed
    assert leases == [1]
    wait_until(lambda: stored_answer(stack, seen.conversation_id or "") == seen.text)


@pytest.mark.parametrize("service", ["generator", "safety"])
def test_model_service_killed_mid_stream(stack: Stack, service: str) -> None:
    """The stream ends with an error event at once; 503 + Retry-After while the service is
    down; it serves again once restarted."""
    process = stack.services[service]
    seen = stream_answer(stack.gateway_url, on_first_text=process.kill)
    try:
        assert_ended_with_503(seen)
        # Safety fails closed: nothing after the kill was released unmoderated.
        assert len(seen.text.split()) < WORDS
        refused = chat(stack.gateway_url)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "2"
        assert service in refused.json()["error"]["message"]
    finally:
        stack.start_service(service)
    wait_healthy(stack)


def test_history_killed_mid_stream_then_gateway_killed_with_the_outbox_full(
    stack: Stack,
) -> None:
    """History dies mid-answer: the answer completes and waits in the outbox. Then the gateway
    itself is killed -9 before history is back. The outbox is on disk: once both return, the
    exchange is in history."""
    history = stack.services["history"]
    seen = stream_answer(stack.gateway_url, on_first_text=history.kill)
    assert seen.completed, seen
    second = stream_answer(stack.gateway_url)
    assert second.completed, second
    assert readyz(stack)["history_outbox_depth"] == 2
    stack.services["gateway"].kill()
    stack.start_service("history")
    stack.start_service("gateway")
    wait_until(lambda: readyz(stack)["history_outbox_depth"] == 0)
    for answer in (seen, second):
        assert answer.conversation_id is not None
        assert stored_answer(stack, answer.conversation_id) == answer.text


def test_gateway_killed_mid_stream(stack: Stack) -> None:
    """The client sees the connection drop (nothing else can reach it); the restarted gateway
    serves, and the dead one's lease expires instead of counting against the key forever."""
    gateway = stack.services["gateway"]
    seen = stream_answer(stack.gateway_url, on_first_text=gateway.kill)
    assert seen.broken and not seen.done
    stack.start_service("gateway")
    wait_healthy(stack)


# --- frozen (SIGSTOP): slower than the deadline ------------------------------------------------


def test_frozen_safety_fails_closed_within_its_deadline(stack: Stack) -> None:
    safety = stack.services["safety"]
    safety.pause()
    try:
        started = time.monotonic()
        refused = chat(stack.gateway_url)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "2"
        assert time.monotonic() - started < HANG_BOUND_S
        # Mid-stream: output moderation cannot classify, so the stream ends, fail-closed.
        safety.resume()
        seen = stream_answer(stack.gateway_url, on_first_text=safety.pause)
        assert_ended_with_503(seen)
        assert len(seen.text.split()) < WORDS
    finally:
        safety.resume()
    wait_healthy(stack)


def test_frozen_history_still_answers_and_writes_later(stack: Stack) -> None:
    history = stack.services["history"]
    history.pause()
    try:
        seen = stream_answer(stack.gateway_url)
        assert seen.completed, seen
        assert readyz(stack)["history_outbox_depth"] >= 1
    finally:
        history.resume()
    wait_until(lambda: readyz(stack)["history_outbox_depth"] == 0)
    assert stored_answer(stack, seen.conversation_id or "") == seen.text


def test_frozen_generator_mid_stream_ends_the_stream(stack: Stack) -> None:
    generator = stack.services["generator"]
    seen = stream_answer(stack.gateway_url, on_first_text=generator.pause)
    try:
        assert_ended_with_503(seen)
        # Before any byte is sent, a frozen generator is a plain 503 (keepalive notices it).
        started = time.monotonic()
        refused = chat(stack.gateway_url, timeout_s=60)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "2"
        assert time.monotonic() - started < HANG_BOUND_S
    finally:
        generator.resume()
    wait_healthy(stack)


def test_frozen_redis_falls_back_without_hanging(stack: Stack, redis: RedisProcess) -> None:
    redis.pause()
    try:
        seen = stream_answer(stack.gateway_url)
        assert seen.completed, seen
        assert seen.elapsed_s < HANG_BOUND_S
    finally:
        redis.resume()
    wait_until(lambda: readyz(stack)["dependencies"]["redis"] == "ok")
    wait_healthy(stack)


# --- the outbox's bound ------------------------------------------------------------------------


def test_full_outbox_refuses_new_stored_requests_and_loses_nothing(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """History down long enough to fill the outbox: stored requests get 503 + Retry-After
    before anything is generated; unstored ones still answer; all that was accepted lands."""
    outbox = tmp_path_factory.mktemp("outbox") / "outbox.db"
    gateway = start_extra_gateway(
        stack, {"GATEWAY_OUTBOX_MAX_ITEMS": "2", "GATEWAY_OUTBOX_PATH": str(outbox)}
    )
    url = f"http://127.0.0.1:{gateway.http_port}"
    stack.services["history"].kill()
    try:
        accepted = [stream_answer(url), stream_answer(url)]
        assert all(a.completed for a in accepted), accepted
        refused = chat(url, store=True)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "2"
        assert "store" in refused.json()["error"]["message"]
        assert chat(url, store=False).status_code == 200
    finally:
        stack.start_service("history")
    wait_until(lambda: chat(url, store=True).status_code == 200)
    for answer in accepted:
        assert stored_answer(stack, answer.conversation_id or "") == answer.text
    gateway.stop()


# --- everything at once ------------------------------------------------------------------------


def test_every_completed_exchange_survives_a_series_of_faults(
    stack: Stack, redis: RedisProcess
) -> None:
    """Four clients stream stored answers without pause while history, Redis, the generator,
    safety and the gateway are killed or frozen in turn. Afterwards every answer a client saw
    complete is in history, word for word, and no lease is left behind."""
    stop = threading.Event()
    results: list[tuple[str, Stream]] = []
    lock = threading.Lock()

    def client(key: str) -> None:
        while not stop.is_set():
            seen = stream_answer(stack.gateway_url, key=key, timeout_s=30)
            with lock:
                results.append((key, seen))
            if not seen.completed:
                time.sleep(0.2)

    keys = [ALICE_KEY, BOB_KEY, ALICE_KEY, BOB_KEY]
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in keys]
    for thread in threads:
        thread.start()

    faults = random.Random(9)
    try:
        time.sleep(2)
        stack.services["history"].kill()
        time.sleep(4)
        stack.start_service("history")
        redis.kill()
        time.sleep(3)
        redis.start()
        stack.services["safety"].pause()
        time.sleep(faults.uniform(1.5, 2.5))
        stack.services["safety"].resume()
        stack.services["history"].kill()
        time.sleep(3)
        stack.services["gateway"].kill()
        stack.start_service("gateway")
        stack.start_service("history")
        stack.services["generator"].kill()
        time.sleep(1)
        stack.start_service("generator")
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        for name in ("generator", "safety", "history", "gateway"):
            stack.services[name].resume()
            if not stack.services[name].running:
                stack.start_service(name)

    completed = [(k, r) for k, r in results if r.completed]
    failed = [r for _, r in results if not r.completed]
    assert len(completed) >= 8, f"{len(completed)} completed, {len(failed)} not"
    # Every failure was one of the policies' answers, never a hang or a 500.
    for seen in failed:
        assert (
            seen.broken
            or seen.status == 503
            or (seen.error or {}).get("code") == ("service_unavailable")
        ), seen
    wait_until(lambda: readyz(stack)["history_outbox_depth"] == 0)
    for key, seen in completed:
        other = BOB_KEY if key == ALICE_KEY else ALICE_KEY
        url = f"{stack.gateway_url}/v1/conversations/{seen.conversation_id}"
        mine = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert mine.status_code == 200, (seen, mine.text)
        answers = [m["content"] for m in mine.json()["messages"] if m["role"] == "assistant"]
        assert answers == [seen.text]
        theirs = httpx.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=10)
        assert theirs.status_code == 404
    # The killed gateway's leases expired (TTL 3 s here); the live one released its own.
    client = redis_client.Redis.from_url(redis.url)
    wait_until(lambda: sum(client.zcard(k) for k in client.scan_iter("parlance:lease:*")) == 0, 30)
