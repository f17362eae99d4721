"""Reading the gateway's Server-Sent Events with httpx-sse, and one streamed chat answer as
the client saw it (text, finish, error event, [DONE], a broken connection, a hang)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource

from parlance.testing.chat import base_url
from parlance.testing.keys import ALICE_KEY, bearer

DONE = "[DONE]"


def iter_data(response: httpx.Response) -> Iterator[str]:
    """Each event's data, [DONE] included; fails unless the response is text/event-stream."""
    for event in EventSource(response).iter_sse():
        yield event.data


def iter_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON events of a stream, in order, without the closing [DONE]."""
    for data in iter_data(response):
        if data != DONE:
            yield json.loads(data)


async def aiter_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """iter_events for an httpx.AsyncClient stream."""
    async for event in EventSource(response).aiter_sse():
        if event.data != DONE:
            yield json.loads(event.data)


def read_events(response: httpx.Response) -> list[dict[str, Any]]:
    """Every JSON event of a whole stream; asserts that it ended with [DONE]."""
    data = list(iter_data(response))
    assert data and data[-1] == DONE, f"the stream did not end with [DONE]: {data[-3:]}"
    assert DONE not in data[:-1], "[DONE] before the end of the stream"
    return [json.loads(d) for d in data[:-1]]


def text_of(events: list[dict[str, Any]]) -> str:
    """The answer's text: the first choice's content deltas joined."""
    return "".join(
        (e["choices"][0].get("delta") or {}).get("content") or ""
        for e in events
        if e.get("choices")
    )


@dataclass
class StreamResult:
    """What a client saw of one streamed answer."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    conversation_id: str | None = None
    text: str = ""
    finish_reason: str | None = None
    error: dict[str, Any] | None = None
    done: bool = False
    broken: bool = False
    # The stream was still open at the deadline (a hang), and the client gave up.
    hung: bool = False
    started_s: float = 0.0
    elapsed_s: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.done and self.finish_reason in ("stop", "length") and self.error is None

    @property
    def ended_s(self) -> float:
        return self.started_s + self.elapsed_s


def _take(seen: StreamResult, event: dict[str, Any], on_first_text: Callable[[], object] | None):
    seen.events.append(event)
    if "error" in event:
        seen.error = event["error"]
        return
    seen.conversation_id = seen.conversation_id or event.get("conversation_id")
    for choice in event.get("choices", []):
        content = (choice.get("delta") or {}).get("content")
        if content:
            if not seen.text and on_first_text is not None:
                on_first_text()
            seen.text += content
        if choice.get("finish_reason"):
            seen.finish_reason = choice["finish_reason"]


def stream_chat(
    target: Any,
    body: dict[str, Any],
    key: str = ALICE_KEY,
    *,
    on_first_text: Callable[[], object] | None = None,
    timeout_s: float = 60.0,
    deadline_s: float | None = None,
) -> StreamResult:
    """Streams one answer from a stack's gateway (or a gateway process, or a URL) and records
    what arrived. `on_first_text` runs once, when the first text arrives. The whole stream is
    bounded by `deadline_s` (default: `timeout_s`), not only each read: keepalive comments
    cannot keep it open."""
    seen = StreamResult(started_s=time.monotonic())
    deadline = seen.started_s + (deadline_s if deadline_s is not None else timeout_s)
    try:
        with httpx.stream(
            "POST",
            f"{base_url(target)}/v1/chat/completions",
            json={**body, "stream": True},
            headers=bearer(key),
            timeout=timeout_s,
        ) as response:
            seen.status = response.status_code
            seen.headers = dict(response.headers)
            if response.status_code != 200:
                response.read()
                seen.error = response.json().get("error")
                return seen
            for data in iter_data(response):
                if data == DONE:
                    seen.done = True
                else:
                    _take(seen, json.loads(data), on_first_text)
                if time.monotonic() > deadline:
                    seen.hung = True
                    break
    except httpx.TimeoutException:
        seen.hung = True
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
        seen.broken = True
    finally:
        seen.elapsed_s = time.monotonic() - seen.started_s
    return seen
