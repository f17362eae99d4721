"""Graceful shutdown: SIGTERM to the gateway or to the generator lets the streams in flight
finish within the grace period, refuses new requests (connection refused or 503 with
Retry-After), and the process exits 0.

The generator is the scripted test engine at a slow token rate, so that streams are surely in
flight when the signal arrives and take a few seconds to finish.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from parlance.testing import (
    ServiceProcess,
    Stack,
    StackPool,
    StreamResult,
    chat,
    chat_body,
    scripted_generator,
    start_extra_gateway,
    stream_chat,
)

# 24 tokens at 8 a second: each stream lasts ~3 s, well inside both grace periods.
SCRIPT = " ".join(f"w{i}" for i in range(24))
GRACE_S = 20


@pytest.fixture(scope="module")
def slow_stack(stacks: StackPool) -> Iterator[Stack]:
    # Its own processes: the tests send SIGTERM to them.
    stack = stacks.start(
        "shutdown",
        gateway_env={"GATEWAY_RPM_LIMIT": "0", "GATEWAY_TPM_LIMIT": "0"},
        env={
            "generator": {
                **scripted_generator(SCRIPT, 8),
                "GENERATOR_SHUTDOWN_GRACE_S": str(GRACE_S),
            }
        },
        share=False,
    )
    yield stack
    stack.stop()


@dataclass
class Streaming:
    started: threading.Event
    result: StreamResult | None = None
    error: BaseException | None = None


def stream_in_thread(base_url: str) -> tuple[threading.Thread, Streaming]:
    streaming = Streaming(threading.Event())

    def run() -> None:
        try:
            streaming.result = stream_chat(
                base_url, chat_body("go", store=True), on_first_text=streaming.started.set
            )
        except BaseException as exc:  # reported by the test
            streaming.error = exc
        finally:
            streaming.started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, streaming


def start_streams(base_url: str, count: int) -> list[tuple[threading.Thread, Streaming]]:
    streams = [stream_in_thread(base_url) for _ in range(count)]
    for _, streaming in streams:
        assert streaming.started.wait(30)
        assert streaming.error is None, streaming.error
        assert streaming.result is None or streaming.result.status == 200, streaming.result
    return streams


def assert_streams_completed(streams: list[tuple[threading.Thread, Streaming]]) -> None:
    for thread, streaming in streams:
        thread.join(GRACE_S + 10)
        assert not thread.is_alive()
        assert streaming.error is None, repr(streaming.error)
        result = streaming.result
        assert result is not None and result.status == 200, result
        assert not result.broken and not result.hung and result.error is None, result
        assert result.finish_reason == "stop", result
        assert result.text.split() == SCRIPT.split()


def refused(base_url: str) -> httpx.Response | None:
    """A new request; None when the connection is refused."""
    try:
        return chat(base_url, chat_body("new", max_tokens=2), timeout_s=30)
    except httpx.TransportError:
        return None


def wait_exit(process: ServiceProcess, timeout_s: float) -> int:
    assert process.process is not None
    return process.process.wait(timeout_s)


def test_sigterm_to_gateway_drains_streams_and_refuses_new_requests(slow_stack: Stack) -> None:
    # A gateway of its own on the same services, so the stack's one keeps serving.
    gateway = start_extra_gateway(slow_stack, {"GATEWAY_SHUTDOWN_GRACE_S": str(GRACE_S)})
    base = f"http://127.0.0.1:{gateway.http_port}"
    streams = start_streams(base, 6)
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGTERM)
    # The signal takes a moment to land: until then a new request may still be served in full.
    deadline = time.monotonic() + 10
    while True:
        response = refused(base)
        if response is None:
            break
        if response.status_code == 503:
            assert "retry-after" in response.headers
            break
        assert response.status_code == 200, response.text
        assert time.monotonic() < deadline, "the gateway kept accepting requests after SIGTERM"
        time.sleep(0.1)
    assert any(t.is_alive() for t, _ in streams), "streams ended before the test could check"
    assert_streams_completed(streams)
    assert wait_exit(gateway, GRACE_S + 15) == 0, gateway.tail()
    # The stack's own gateway never noticed.
    assert refused(slow_stack.gateway_url).status_code == 200  # type: ignore[union-attr]


def test_sigterm_to_generator_drains_streams_and_answers_503(slow_stack: Stack) -> None:
    generator = slow_stack.services["generator"]
    streams = start_streams(slow_stack.gateway_url, 6)
    assert generator.process is not None
    generator.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while True:
        response = refused(slow_stack.gateway_url)
        assert response is not None, "the gateway itself must keep answering"
        if response.status_code == 503:
            break
        assert response.status_code == 200, response.text
        assert time.monotonic() < deadline, "the generator kept accepting requests after SIGTERM"
        time.sleep(0.1)
    error = response.json()["error"]
    assert error["code"] == "service_unavailable" and "generator" in error["message"]
    assert response.headers["retry-after"] == "2"
    assert any(t.is_alive() for t, _ in streams), "streams ended before the test could check"
    assert_streams_completed(streams)
    assert wait_exit(generator, GRACE_S + 15) == 0, generator.tail()
    # Still refused while it is down; served again once it is back.
    response = refused(slow_stack.gateway_url)
    assert response is not None and response.status_code == 503
    slow_stack.start_service("generator")
    deadline = time.monotonic() + 30
    while (response := refused(slow_stack.gateway_url)) is None or response.status_code != 200:
        assert time.monotonic() < deadline, response.text if response else "refused"
        time.sleep(0.3)
