"""Request ids across the stack, and what the logs of a session must never contain.

The stack runs the scripted test engine in echo mode (it answers with the last user message),
with the gateway, generator and safety at DEBUG so that every line a service can write for a
request is there to look at. A second gateway with input moderation off lets a toxic echo
reach output moderation. The devstack writes each process's log to <data_dir>/run/*.log in
the text format: `<date> <time> <LEVEL> <service> [<request id>] <logger>: <message>`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from parlance.testing import (
    ALICE,
    ALICE_KEY,
    BOB_KEY,
    MODEL,
    ServiceProcess,
    Stack,
    StackPool,
    scripted_generator,
    start_extra_gateway,
)

# Distinctive strings: found in a log only if message text leaked into it.
PROMPT = "Please describe the marmalade zebra quantum lighthouse."
TOXIC = "Hello there, friend. You are a stupid worthless idiot and a moron, marmalade zebra."
TAIL = " ".join(["The lighthouse keeps its lamp burning through the night."] * 20)
WRONG_KEY = "sk-test-mallory-0123456789"
RID = "test-rid-123"
LINE = re.compile(
    r"^\S+ \S+ (?P<level>[A-Z]+)\s+(?P<service>\S+) \[(?P<rid>[^\]]*)\] (?P<logger>[^:]+): "
)


@dataclass
class RidStack:
    stack: Stack
    extra: ServiceProcess

    @property
    def run_dir(self) -> Path:
        return self.stack.services["gateway"].log_path.parent

    def url(self, gateway: str = "main") -> str:
        port = (
            self.stack.services["gateway"].http_port if gateway == "main" else self.extra.http_port
        )
        return f"http://127.0.0.1:{port}/v1/chat/completions"


@pytest.fixture(scope="module")
def rid_stack(stacks: StackPool) -> Iterator[RidStack]:
    # Its own processes: the tests read every log line of the session.
    stack = stacks.start(
        "request-id",
        gateway_env={"GATEWAY_LOG_LEVEL": "DEBUG"},
        env={
            "generator": {**scripted_generator(tokens_per_s=200), "GENERATOR_LOG_LEVEL": "DEBUG"},
            "safety": {"SAFETY_LOG_LEVEL": "DEBUG"},
        },
        share=False,
    )
    try:
        extra = start_extra_gateway(stack, {"GATEWAY_MODERATE_INPUT": "false"})
        yield RidStack(stack, extra)
    finally:
        stack.stop()
        for name, service in stack.services.items():
            if name.startswith("gateway-"):
                service.stop()


def body(content: str, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def lines_with(log: Path, request_id: str, min_level: str = "DEBUG") -> list[str]:
    """Lines the service's own code (parlance.* loggers) wrote for `request_id`, at
    `min_level` or above. grpc's internal DEBUG lines are left out: they carry the id only when
    they happen to fire inside the call."""
    order = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if (
            match
            and match["rid"] == request_id
            and match["logger"].startswith("parlance.")
            and order.index(match["level"]) >= order.index(min_level)
        ):
            found.append(line)
    return found


def wait_for_lines(log: Path, request_id: str, min_level: str = "DEBUG") -> list[str]:
    """Log lines are written as the request runs; give the last ones a moment to land."""
    deadline = time.monotonic() + 3.0
    while True:
        found = lines_with(log, request_id, min_level)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_client_request_id_is_returned(rid_stack: RidStack) -> None:
    reply = httpx.post(
        rid_stack.url(), json=body(PROMPT), headers={**ALICE, "x-request-id": RID}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == RID
    with httpx.stream(
        "POST",
        rid_stack.url(),
        json=body(PROMPT, stream=True),
        headers={**ALICE, "x-request-id": f"{RID}-stream"},
        timeout=60,
    ) as streamed:
        assert streamed.headers["x-request-id"] == f"{RID}-stream"
        streamed.read()
    # Errors carry it too.
    refused = httpx.post(rid_stack.url(), json=body(PROMPT), headers={"x-request-id": RID})
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == RID


def test_request_without_id_gets_a_generated_one(rid_stack: RidStack) -> None:
    ids = set()
    for _ in range(2):
        reply = httpx.post(rid_stack.url(), json=body(PROMPT), headers=ALICE, timeout=60)
        assert reply.status_code == 200
        ids.add(reply.headers["x-request-id"])
    assert len(ids) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_request_id_in_gateway_and_safety_logs(rid_stack: RidStack) -> None:
    """A toxic echo stopped by output moderation: the lines the gateway (INFO) and safety
    (DEBUG) write for it carry the client's id, so it crossed the gRPC hop to safety."""
    rid = f"{RID}-flagged"
    with httpx.stream(
        "POST",
        rid_stack.url("extra"),
        json=body(f"{TOXIC} {TAIL}", stream=True),
        headers={**ALICE, "x-request-id": rid},
        timeout=60,
    ) as streamed:
        assert streamed.status_code == 200
        assert b"content_filter" in streamed.read()
    gateway = wait_for_lines(rid_stack.extra.log_path, rid)
    assert any("output stopped by moderation" in line for line in gateway), gateway
    safety = wait_for_lines(rid_stack.stack.services["safety"].log_path, rid)
    assert any("classified" in line for line in safety), safety


def test_request_id_in_generator_log(rid_stack: RidStack) -> None:
    rid = f"{RID}-generator"
    reply = httpx.post(
        rid_stack.url(), json=body(PROMPT), headers={**ALICE, "x-request-id": rid}, timeout=60
    )
    assert reply.status_code == 200
    assert wait_for_lines(rid_stack.stack.services["generator"].log_path, rid)


@pytest.mark.parametrize("service", ["gateway", "generator", "safety"])
def test_clean_request_is_logged_at_info(rid_stack: RidStack, service: str) -> None:
    """Each service on the request's path writes at least one INFO line for it."""
    rid = f"{RID}-info-{service}"
    reply = httpx.post(
        rid_stack.url(), json=body(PROMPT), headers={**ALICE, "x-request-id": rid}, timeout=60
    )
    assert reply.status_code == 200
    assert wait_for_lines(rid_stack.stack.services[service].log_path, rid, "INFO")


def test_session_logs_hold_no_key_and_no_message_text(rid_stack: RidStack) -> None:
    main, extra = rid_stack.url(), rid_stack.url("extra")
    ok = httpx.post(main, json=body(PROMPT), headers=ALICE, timeout=60)
    assert ok.status_code == 200
    stored = httpx.post(main, json=body(PROMPT, store=True), headers=ALICE, timeout=60)
    assert stored.status_code == 200
    cached = [
        httpx.post(main, json=body(PROMPT, temperature=0), headers=ALICE, timeout=60)
        for _ in range(2)
    ]
    assert cached[1].headers["x-cache"] == "hit"
    with httpx.stream(
        "POST", main, json=body(PROMPT, stream=True), headers=ALICE, timeout=60
    ) as streamed:
        streamed.read()
    flagged_in = httpx.post(main, json=body(TOXIC), headers=ALICE, timeout=60)
    assert flagged_in.status_code == 400
    flagged_out = httpx.post(extra, json=body(f"{TOXIC} {TAIL}"), headers=ALICE, timeout=60)
    assert flagged_out.json()["choices"][0]["finish_reason"] == "content_filter"
    wrong = httpx.post(
        main, json=body(PROMPT), headers={"Authorization": f"Bearer {WRONG_KEY}"}, timeout=60
    )
    assert wrong.status_code == 401
    logs = sorted(rid_stack.run_dir.glob("*.log"))
    assert {p.name for p in logs} >= {"gateway.log", "generator.log", "safety.log", "history.log"}
    forbidden = [ALICE_KEY, BOB_KEY, WRONG_KEY, "marmalade", "zebra", "lighthouse", "idiot"]
    for log in logs:
        text = log.read_text(errors="replace")
        for needle in forbidden:
            assert needle not in text, f"{needle!r} in {log.name}"
