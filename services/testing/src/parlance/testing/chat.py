"""The one chat request helper of the process-level tests."""

from __future__ import annotations

from typing import Any

import httpx

from parlance.testing.keys import ALICE_KEY, MODEL, bearer


def chat_body(content: str = "Hi!", **fields: Any) -> dict[str, Any]:
    """A chat completion request for the tests' model with one user message."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def chat(
    url: str,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = ALICE_KEY,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> httpx.Response:
    """POST /v1/chat/completions to the gateway at `url` (`stack.gateway_url`), with `key`'s
    bearer header (none when `key` is None) and `headers` on top."""
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=chat_body() if body is None else body,
        headers={**(bearer(key) if key else {}), **(headers or {})},
        timeout=timeout_s,
    )
