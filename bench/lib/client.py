"""The one HTTP client of the benchmarks: chat completions over httpx, streamed ones read by
the one SSE reader (lib.sse), timed from the send.

One `ChatClient` per target URL, with a lane (one keep-alive connection) per closed-loop
worker, so that a worker pays TCP and HTTP set-up only in its warm-up. Errors never raise:
they come back in `ChatResult.error`, so that a benchmark counts them by kind and goes on.

httpx costs the client more CPU than the hand-written HTTP/1.1 readers the benchmarks had
before (about 1.5 ms against 0.13 ms per streamed 16-token answer on the 2-core dev machine):
every load report shows the client's own CPU, and it counts against the stack's cores when
the client shares them.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from lib.sse import StreamError, chat_chunks, content_of

CHAT_PATH = "/v1/chat/completions"


def chat_body(prompt: str, model: str, **extra: Any) -> dict[str, Any]:
    """A one-message chat request; `extra` adds fields (max_tokens, stream_options, ...)."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


@dataclass
class ChatResult:
    """What one request saw. Times are seconds from the send (perf_counter); None when the
    moment never came (no content, an error before the headers)."""

    started: float
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    headers_s: float | None = None
    first_event_s: float | None = None
    ttft_s: float | None = None  # the first chunk with content
    last_content_s: float | None = None
    total_s: float = math.nan  # end of the body (right after [DONE] for a stream)
    completion_tokens: int = 0  # from the usage chunk (stream_options.include_usage) or body
    finish_reason: str | None = None
    error: str | None = None
    body: dict[str, Any] | None = None  # the JSON of a non-streamed answer
    content: list[str] = field(default_factory=list)  # a stream's text, chunk by chunk

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ended_at(self) -> float:
        """perf_counter time at the end of the body."""
        return self.started + self.total_s

    @property
    def tpot_s(self) -> float | None:
        """Mean gap per output token after the first: (last content - first content) /
        (completion tokens - 1); None below two tokens or without usage."""
        if self.ttft_s is None or self.last_content_s is None or self.completion_tokens < 2:
            return None
        return (self.last_content_s - self.ttft_s) / (self.completion_tokens - 1)

    def server_timing(self) -> dict[str, float]:
        """The Server-Timing header's parts in ms: 'auth;dur=0.10, limits;dur=1.20' ->
        {'auth': 0.1, 'limits': 1.2} (the Parlance gateway sends one; others may not)."""
        parts: dict[str, float] = {}
        for item in self.headers.get("server-timing", "").split(","):
            name, _, duration = item.strip().partition(";dur=")
            try:
                parts[name] = float(duration)
            except ValueError:
                continue
        return parts

    def since_start(self) -> float:
        return time.perf_counter() - self.started


class ChatClient:
    """Chat completions against one base URL (a gateway, or any OpenAI-compatible server).

    Requests go through lanes, one httpx client with one keep-alive connection each: a closed
    loop gives each worker its own lane (`lane=worker`), as a real client holds its own
    connection. One pool of many connections would cost more client CPU per request, since
    httpcore's pool scans its connections for every request (about 3 against 1.5 ms of CPU per
    streamed request at 32 workers, measured on the 2-core dev machine).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.headers = {
            **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
            **(headers or {}),
        }
        # Built once and shared: httpx would load the CA bundle again for every lane.
        self._tls = ssl.create_default_context()
        self._lanes: dict[int, httpx.AsyncClient] = {}

    def lane(self, index: int) -> httpx.AsyncClient:
        if index not in self._lanes:
            self._lanes[index] = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self.headers,
                timeout=httpx.Timeout(self.timeout_s),
                verify=self._tls,
                # Idle connections close on our side before uvicorn's 5 s keep-alive timeout
                # closes them on its side, so that no request is sent into a closing one.
                limits=httpx.Limits(max_connections=1, keepalive_expiry=4.0),
            )
        return self._lanes[index]

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for lane in self._lanes.values():
            await lane.aclose()
        self._lanes.clear()

    async def stream(
        self, body: dict[str, Any], headers: dict[str, str] | None = None, lane: int = 0
    ) -> ChatResult:
        """POST `body` with stream=true and read the stream to [DONE]."""
        result = ChatResult(time.perf_counter())
        work = self._post(
            self.lane(lane), {**body, "stream": True}, headers, result, self._read_stream
        )
        await self._guarded(work, result)
        return result

    async def complete(
        self, body: dict[str, Any], headers: dict[str, str] | None = None, lane: int = 0
    ) -> ChatResult:
        """POST `body` without streaming; the answer's JSON lands in `result.body`."""
        result = ChatResult(time.perf_counter())
        work = self._post(
            self.lane(lane), {**body, "stream": False}, headers, result, self._read_json
        )
        await self._guarded(work, result)
        return result

    async def _guarded(self, work: Any, result: ChatResult) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await work
        except (httpx.HTTPError, StreamError, TimeoutError, ValueError) as exc:
            detail = str(exc)[:160]
            result.error = result.error or (
                f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            )
        if math.isnan(result.total_s):
            result.total_s = result.since_start()

    @classmethod
    async def _post(
        cls,
        http: httpx.AsyncClient,
        body: dict[str, Any],
        headers: dict[str, str] | None,
        result: ChatResult,
        read: Callable[[httpx.Response, ChatResult], Awaitable[None]],
    ) -> None:
        """POST the chat request; an answer other than 200 is recorded as the error, a 200's
        body is read by `read` (the stream's chunks, or the JSON answer)."""
        async with http.stream("POST", CHAT_PATH, json=body, headers=headers) as response:
            cls._head(response, result)
            if response.status_code != 200:
                await cls._http_error(response, result)
                return
            await read(response, result)

    @classmethod
    async def _read_stream(cls, response: httpx.Response, result: ChatResult) -> None:
        async for chunk in chat_chunks(response):
            now = result.since_start()
            if result.first_event_s is None:
                result.first_event_s = now
            text = content_of(chunk)
            if text:
                if result.ttft_s is None:
                    result.ttft_s = now
                result.last_content_s = now
                result.content.append(text)
            cls._note(chunk, result)
        result.total_s = result.since_start()

    @classmethod
    async def _read_json(cls, response: httpx.Response, result: ChatResult) -> None:
        await response.aread()
        result.total_s = result.since_start()
        result.body = response.json()
        cls._note(result.body, result)

    @staticmethod
    def _head(response: httpx.Response, result: ChatResult) -> None:
        result.headers_s = result.since_start()
        result.status = response.status_code
        result.headers = dict(response.headers)

    @staticmethod
    async def _http_error(response: httpx.Response, result: ChatResult) -> None:
        text = (await response.aread())[:120].decode(errors="replace")
        result.error = f"http {response.status_code}: {text}"

    @staticmethod
    def _note(chunk: dict[str, Any], result: ChatResult) -> None:
        """Finish reason and token count, from a chunk or a whole answer."""
        for choice in chunk.get("choices") or []:
            result.finish_reason = choice.get("finish_reason") or result.finish_reason
        usage = chunk.get("usage") or {}
        result.completion_tokens = usage.get("completion_tokens", result.completion_tokens)
