"""A schemathesis check loaded by tests/test_bad_input.py (SCHEMATHESIS_HOOKS): every error
the gateway answers is OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON") from None
    if not isinstance(body, dict) or set(body) != {"error"}:
        raise AssertionError(f"error body is not {{'error': ...}}: {body!r:.200}")
    error = body["error"]
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        raise AssertionError(f"error object lacks OpenAI's fields: {error!r:.200}")
    if not isinstance(error["message"], str) or not error["message"]:
        raise AssertionError("error message is empty")
    if response.status_code == 503 and "retry-after" not in {k.lower() for k in response.headers}:
        raise AssertionError("503 without Retry-After")
