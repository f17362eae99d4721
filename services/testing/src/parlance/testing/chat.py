"""The one chat request helper of the process-level tests, and the OpenAI error shape."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from parlance.testing.keys import ALICE, MODEL


class _HasGateway(Protocol):
    @property
    def gateway_url(self) -> str: ...


class _HasPort(Protocol):
    http_port: int | None


def base_url(target: str | _HasGateway | _HasPort) -> str:
    """The gateway's URL of a Stack, of a gateway ServiceProcess, or a URL itself."""
    if isinstance(target, str):
        return target
    if hasattr(target, "gateway_url"):
        return str(target.gateway_url)
    return f"http://127.0.0.1:{target.http_port}"


def chat_body(content: str = "Hi!", **fields: Any) -> dict[str, Any]:
    """A chat completion request for the tests' model with one user message."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def chat(
    target: str | _HasGateway | _HasPort,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    timeout_s: float = 120.0,
) -> httpx.Response:
    """POST /v1/chat/completions to a stack's gateway (or a gateway process, or a URL), as
    Alice unless `headers` say otherwise."""
    return httpx.post(
        f"{base_url(target)}/v1/chat/completions",
        json=chat_body() if body is None else body,
        headers=ALICE if headers is None else headers,
        timeout=timeout_s,
    )


def assert_openai_error(
    response: httpx.Response, *statuses: int, code: str | None = None
) -> dict[str, Any]:
    """Asserts an OpenAI-shaped error, `{"error": {"message", "type", "param", "code"}}`,
    with one of `statuses` (and `code` when given); returns the error object."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)
