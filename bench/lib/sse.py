"""The one SSE reader of the benchmarks: an OpenAI chat stream (`data: {chunk}` events up to
`data: [DONE]`) read with httpx-sse, so that event framing (multi-line data, comments, CRLF)
is the library's, not ours."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

DONE = "[DONE]"


class StreamError(Exception):
    """The stream carried an error event, was not an event stream, or ended without [DONE]."""


async def chat_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each JSON chunk of a streamed chat completion, in order. Returns at `[DONE]`; raises
    StreamError on an error event (the gateway sends `{"error": {...}}` mid-stream) and when
    the stream ends without `[DONE]`."""
    try:
        events = EventSource(response).aiter_sse()
        async for event in events:
            if event.data == DONE:
                # Read the body to its end (the server closes it right after [DONE]), so
                # that the connection goes back to the pool instead of being dropped.
                async for _ in events:
                    pass
                return
            if not event.data:
                continue
            chunk = json.loads(event.data)
            if "error" in chunk:
                raise StreamError(f"error event: {json.dumps(chunk['error'])[:200]}")
            yield chunk
    except SSEError as exc:
        raise StreamError(str(exc)) from exc
    raise StreamError("stream ended without [DONE]")


def content_of(chunk: dict[str, Any]) -> str:
    """The text a chunk adds (the first choice's delta.content; "" for the role chunk, the
    usage chunk and the finish chunk)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return str((choices[0].get("delta") or {}).get("content") or "")
