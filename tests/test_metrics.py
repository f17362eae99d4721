"""Every series issue #8 asks for, with the right counts, after a scripted session.

The stack here is its own (so counts are absolute, not deltas) and runs the scripted test
engine in echo mode: it answers with the last user message, so one stack serves a clean chat,
a toxic output (through a second gateway whose input moderation is off) and exact token counts.

The session, on the main gateway (key alice):
  plain chat, streamed chat, the same deterministic chat twice (cache miss, then hit),
  a toxic prompt (input flag, 400), a stored chat (history write).
On a second gateway on the same services (key bob; RPM 4, one concurrent request per key,
input moderation off):
  a streamed toxic echo (output flag, content_filter), a long stream that holds the key's
  only lease while a second request is refused (429, concurrency), one more chat, and a
  fifth request refused by the RPM limit (429).
Last, history is killed: a stored chat still answers and its write waits in the outbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from parlance.testing import (
    ALICE,
    ALICE_KEY,
    BOB,
    DONE,
    MODEL,
    ServiceProcess,
    Stack,
    StackPool,
    chat_body,
    iter_data,
    read_events,
    scrape,
    scripted_generator,
    start_extra_gateway,
    static_key_id,
    total,
    wait_until,
)

CLEAN = "Tell me three things about the weather in spring."
TOXIC = "Hello there, this is a friendly answer. You are a stupid worthless idiot and a moron."
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)  # 270 words: ~1.4 s


@dataclass
class Session:
    stack: Stack
    extra: ServiceProcess
    # Usage of every answer that the generator produced (not cache replays), per gateway.
    usage: dict[str, list[dict[str, int]]] = field(
        default_factory=lambda: {"main": [], "extra": []}
    )
    statuses: dict[str, list[int]] = field(default_factory=lambda: {"main": [], "extra": []})
    before_history_down: dict[str, dict[str, float]] = field(default_factory=dict)
    after: dict[str, dict[str, float]] = field(default_factory=dict)


body = chat_body


def stream_events(url: str, payload: dict[str, Any], headers: dict[str, str]) -> list[dict]:
    with httpx.stream("POST", url, json=payload, headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return read_events(response)


def scrape_all(session: Session) -> dict[str, dict[str, float]]:
    services = session.stack.services
    ports = {
        "gateway": services["gateway"].metrics_port,
        "extra": session.extra.metrics_port,
        "generator": services["generator"].metrics_port,
        "safety": services["safety"].metrics_port,
        "history": services["history"].metrics_port,
    }
    running = {"history": services["history"].running}
    return {
        name: scrape(port)
        for name, port in ports.items()
        if port is not None and running.get(name, True)
    }


def run_session(stack: Stack, extra: ServiceProcess) -> Session:
    session = Session(stack, extra)
    main = f"{stack.gateway_url}/v1/chat/completions"
    other = f"http://127.0.0.1:{extra.http_port}/v1/chat/completions"

    def post(
        url: str, side: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        response = httpx.post(url, json=payload, headers=headers, timeout=60)
        session.statuses[side].append(response.status_code)
        if response.status_code == 200 and response.headers.get("x-cache") != "hit":
            session.usage[side].append(response.json()["usage"])
        return response

    def stream(url: str, side: str, payload: dict[str, Any], headers: dict[str, str]) -> list[dict]:
        payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        events = stream_events(url, payload, headers)
        session.statuses[side].append(200)
        session.usage[side].append(events[-1]["usage"])
        return events

    # --- main gateway (alice) ---
    assert post(main, "main", body(CLEAN), ALICE).status_code == 200
    events = stream(main, "main", body(CLEAN), ALICE)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    # The lease is released in a task of its own just after the stream's end: the next request
    # must not find it still held (a concurrency rejection this test does not expect).
    gateway_metrics = stack.services["gateway"].metrics_port
    wait_until(lambda: scrape(gateway_metrics)["parlance_gateway_leases_held{}"] == 0)
    miss = post(main, "main", body(CLEAN, temperature=0), ALICE)
    assert miss.headers["x-cache"] == "miss"
    hit = post(main, "main", body(CLEAN, temperature=0), ALICE)
    assert hit.headers["x-cache"] == "hit"
    refused = post(main, "main", body(TOXIC), ALICE)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "content_filter"
    stored = post(main, "main", body(CLEAN, store=True), ALICE)
    assert stored.json()["conversation_id"]

    # --- extra gateway (bob): output flag, concurrency 429, RPM 429 ---
    # The clean tail keeps the generation running until the flag cancels it.
    events = stream(other, "extra", body(f"{TOXIC} {LONG}"), BOB)
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "content_filter"
    long_payload = {**body(LONG), "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", other, json=long_payload, headers=BOB, timeout=60) as holding:
        assert holding.status_code == 200
        data = iter_data(holding)
        next(data)  # the stream is open: bob's only lease is held
        busy = post(other, "extra", body(CLEAN), BOB)
        assert busy.status_code == 429, busy.text
        assert "concurrent" in busy.json()["error"]["message"]
        rest = [d for d in data if d != DONE]
    session.statuses["extra"].append(200)
    session.usage["extra"].append(json.loads(rest[-1])["usage"])
    # The lease is released in a task of its own just after the stream's end.
    wait_until(lambda: scrape(extra.metrics_port)["parlance_gateway_leases_held{}"] == 0)
    assert post(other, "extra", body(CLEAN), BOB).status_code == 200
    limited = post(other, "extra", body(CLEAN), BOB)
    assert limited.status_code == 429 and "Rate limit" in limited.json()["error"]["message"]

    # --- history down: the stored chat answers, its write waits in the outbox ---
    session.before_history_down = scrape_all(session)
    stack.services["history"].kill()
    assert post(main, "main", body(CLEAN, store=True), ALICE).status_code == 200
    # That request's lease, too, is given back in a task of its own just after its answer.
    wait_until(lambda: scrape(gateway_metrics)["parlance_gateway_leases_held{}"] == 0)
    session.after = scrape_all(session)
    return session


@pytest.fixture(scope="module")
def session(stacks: StackPool) -> Iterator[Session]:
    # Its own processes (counts are absolute, and the session kills history).
    stack = stacks.start(
        "metrics",
        # Background title generations would add generator calls of the gateway's own.
        gateway_env={"GATEWAY_GENERATE_TITLES": "false"},
        env={"generator": scripted_generator(tokens_per_s=200)},
        share=False,
    )
    try:
        extra = start_extra_gateway(
            stack,
            {
                "GATEWAY_RPM_LIMIT": "4",
                "GATEWAY_MAX_CONCURRENT_PER_KEY": "1",
                "GATEWAY_MODERATE_INPUT": "false",
            },
        )
        yield run_session(stack, extra)
    finally:
        stack.stop()
        for name, service in stack.services.items():
            if name.startswith("gateway-"):
                service.stop()


def count(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a series' samples whose labels include `labels`."""
    found = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for key, value in samples.items():
        series, _, rest = key.partition("{")
        if series == name and all(w in rest.rstrip("}").split(",") for w in wanted):
            found += value
    return found


CHAT = "/v1/chat/completions"


def test_http_requests_by_route_and_status(session: Session) -> None:
    main, extra = session.after["gateway"], session.after["extra"]
    assert count(main, "parlance_gateway_http_requests_total", route=CHAT, status="200") == 6
    assert count(main, "parlance_gateway_http_requests_total", route=CHAT, status="400") == 1
    assert count(extra, "parlance_gateway_http_requests_total", route=CHAT, status="200") == 3
    assert count(extra, "parlance_gateway_http_requests_total", route=CHAT, status="429") == 2
    for side, samples in (("main", main), ("extra", extra)):
        assert count(samples, "parlance_gateway_http_requests_total", route=CHAT) == len(
            session.statuses[side]
        )


def test_end_to_end_latency_histogram(session: Session) -> None:
    main = session.after["gateway"]
    name = "parlance_gateway_http_request_duration_seconds"
    assert count(main, f"{name}_count", route=CHAT) == 7
    assert count(main, f"{name}_bucket", route=CHAT, le="+Inf") == 7
    assert count(main, f"{name}_sum", route=CHAT) > 0


def test_ttft_and_tpot_histograms(session: Session) -> None:
    # Every answer the generator produced: not the cache replay, not the refused requests.
    for side, port_name in (("main", "gateway"), ("extra", "extra")):
        samples = session.after[port_name]
        generated = len(session.usage[side])
        ttft = count(samples, "parlance_gateway_time_to_first_token_seconds_count", model=MODEL)
        tpot = count(samples, "parlance_gateway_time_per_output_token_seconds_count", model=MODEL)
        assert ttft == generated, side
        assert tpot == generated, side
    generator = session.after["generator"]
    all_generated = sum(len(u) for u in session.usage.values())
    assert count(generator, "parlance_generator_time_to_first_token_seconds_count") == all_generated
    assert count(generator, "parlance_generator_time_per_output_token_seconds_count") >= 1


def test_tokens_in_and_out_by_model(session: Session) -> None:
    for side, port_name in (("main", "gateway"), ("extra", "extra")):
        samples = session.after[port_name]
        prompt = sum(u["prompt_tokens"] for u in session.usage[side])
        completion = sum(u["completion_tokens"] for u in session.usage[side])
        name = "parlance_gateway_tokens_total"
        assert count(samples, name, direction="prompt", model=MODEL) == prompt, side
        assert count(samples, name, direction="completion", model=MODEL) == completion, side
    completion_all = sum(u["completion_tokens"] for us in session.usage.values() for u in us)
    generator = session.after["generator"]
    assert total(generator, "parlance_generator_generation_tokens_total") >= completion_all


def test_generator_counts_prompt_tokens_of_cancelled_calls(session: Session) -> None:
    prompt_all = sum(u["prompt_tokens"] for us in session.usage.values() for u in us)
    generator = session.after["generator"]
    assert total(generator, "parlance_generator_prompt_tokens_total") == prompt_all


def test_tokens_by_key(session: Session) -> None:
    # A static key's id is an HMAC of it under the server's secret, never the key.
    samples = session.after["gateway"]
    alice = static_key_id(ALICE_KEY)
    assert count(samples, "parlance_gateway_tokens_total", key_id=alice) > 0


def test_cache_hits(session: Session) -> None:
    main = session.after["gateway"]
    assert count(main, "parlance_gateway_cache_requests_total", result="hit") == 1
    assert count(main, "parlance_gateway_cache_requests_total", result="miss") == 1


def test_rate_limit_and_concurrency_rejections(session: Session) -> None:
    main, extra = session.after["gateway"], session.after["extra"]
    name = "parlance_gateway_ratelimit_decisions_total"
    assert count(main, name, outcome="rejected") == 0
    assert count(main, name, limit="rpm", outcome="allowed") == 7
    assert count(main, name, limit="concurrency", outcome="allowed") == 7
    # bob: 4 requests within the RPM limit, the fifth refused; one of the 4 found the lease
    # taken.
    assert count(extra, name, limit="rpm", outcome="allowed") == 4
    assert count(extra, name, limit="rpm", outcome="rejected") == 1
    assert count(extra, name, limit="concurrency", outcome="allowed") == 3
    assert count(extra, name, limit="concurrency", outcome="rejected") == 1
    assert extra["parlance_gateway_leases_held{}"] == 0
    assert main["parlance_gateway_leases_held{}"] == 0
    assert main["parlance_gateway_requests_in_flight{}"] == 0


def test_moderation_flags_by_category_and_direction(session: Session) -> None:
    main, extra = session.after["gateway"], session.after["extra"]
    name = "parlance_gateway_moderation_flags_total"
    assert count(main, name, direction="input", category="harassment") == 1
    assert count(main, name, direction="output") == 0
    assert count(extra, name, direction="output", category="harassment") == 1
    assert count(extra, name, direction="input") == 0
    # Windows: every generated answer had at least one.
    assert total(main, "parlance_gateway_moderation_windows_total") >= len(session.usage["main"])
    assert total(extra, "parlance_gateway_moderation_holdback_seconds_count") >= 1
    safety = session.after["safety"]
    assert count(safety, "parlance_safety_flags_total", category="harassment", direction="input")
    assert count(safety, "parlance_safety_flags_total", category="harassment", direction="output")
    # Input texts: one per request that reached input moderation on the main gateway.
    assert count(safety, "parlance_safety_texts_classified_total", direction="input") == 6
    assert count(safety, "parlance_safety_classification_latency_seconds_count") >= 6


def test_dependency_latency_and_errors(session: Session) -> None:
    before, after = session.before_history_down["gateway"], session.after["gateway"]
    name = "parlance_gateway_dependency_duration_seconds_count"
    # Input moderation of 6 requests, plus output windows.
    assert count(before, name, dependency="safety") >= 6
    assert count(before, name, dependency="history") >= 1
    assert count(before, "parlance_gateway_dependency_errors_total") == 0
    errors = "parlance_gateway_dependency_errors_total"
    assert count(after, errors, dependency="history", code="UNAVAILABLE") >= 1
    assert count(after, errors, dependency="safety") == 0
    assert count(after, errors, dependency="generator") == 0
    assert after["parlance_gateway_redis_fallback_active{}"] == 0
    assert total(after, "parlance_gateway_redis_duration_seconds_count") > 0
    assert total(after, "parlance_gateway_redis_errors_total") == 0


def test_outbox_depth(session: Session) -> None:
    assert session.before_history_down["gateway"]["parlance_gateway_history_outbox_depth{}"] == 0
    assert session.after["gateway"]["parlance_gateway_history_outbox_depth{}"] == 1
    history = session.before_history_down["history"]
    assert count(history, "parlance_history_messages_appended_total", role="user") == 1
    assert count(history, "parlance_history_messages_appended_total", role="assistant") == 1
    assert count(history, "parlance_history_rpc_duration_seconds_count", method="AppendMessages")


def test_engine_queue_and_running(session: Session) -> None:
    generator = session.after["generator"]
    assert count(generator, "parlance_generator_requests_running", engine="scripted") == 0
    assert count(generator, "parlance_generator_requests_waiting", engine="scripted") == 0
    # (queue time is observed only by engines that queue; the scripted one runs all at once)
    requests = "parlance_generator_requests_total"
    generated = sum(len(u) for u in session.usage.values())
    # The output flag cancels its generation; the others ran to their end.
    assert count(generator, requests, engine="scripted", finish_reason="cancelled") == 1
    assert count(generator, requests, engine="scripted", finish_reason="stop") == generated - 1
