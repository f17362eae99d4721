"""The one HTTP client of the benchmarks: chat completions over httpx, streamed ones read by
the one SSE reader (lib.sse), timed from the send.

One `ChatClient` per target URL; its connection pool keeps up to `connections` keep-alive
connections, so a closed loop of that many workers pays TCP and HTTP set-up only in its
warm-up. Errors never raise: they come back in `ChatResult.error`, so that a benchmark counts
them by kind and goes on.
"""

from __future__ import annotations

import asyncio
import math
import time
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

    def since_start(self) -> float:
        return time.perf_counter() - self.started


class ChatClient:
    """Chat completions against one base URL (a gateway, or any OpenAI-compatible server)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        connections: int = 100,
        timeout_s: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
                **(headers or {}),
            },
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def stream(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> ChatResult:
        """POST `body` with stream=true and read the stream to [DONE]."""
        result = ChatResult(time.perf_counter())
        await self._guarded(self._stream({**body, "stream": True}, headers, result), result)
        return result

    async def complete(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> ChatResult:
        """POST `body` without streaming; the answer's JSON lands in `result.body`."""
        result = ChatResult(time.perf_counter())
        await self._guarded(self._complete({**body, "stream": False}, headers, result), result)
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

    async def _stream(
        self, body: dict[str, Any], headers: dict[str, str] | None, result: ChatResult
    ) -> None:
        async with self.http.stream("POST", CHAT_PATH, json=body, headers=headers) as response:
            self._head(response, result)
            if response.status_code != 200:
                await self._http_error(response, result)
                return
            async for chunk in chat_chunks(response):
                now = result.since_start()
                if result.first_event_s is None:
                    result.first_event_s = now
                if content_of(chunk):
                    if result.ttft_s is None:
                        result.ttft_s = now
                    result.last_content_s = now
                self._note(chunk, result)
            result.total_s = result.since_start()

    async def _complete(
        self, body: dict[str, Any], headers: dict[str, str] | None, result: ChatResult
    ) -> None:
        async with self.http.stream("POST", CHAT_PATH, json=body, headers=headers) as response:
            self._head(response, result)
            if response.status_code != 200:
                await self._http_error(response, result)
                return
            await response.aread()
            result.total_s = result.since_start()
            result.body = response.json()
            self._note(result.body, result)

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
