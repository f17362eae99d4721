"""Schemathesis hooks loaded by tests/test_bad_input.py (SCHEMATHESIS_HOOKS): a check that every
error the gateway answers is OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`;
the served model's name in every valid generated chat request, so that it can reach generation
(a made-up name is a 404 before anything is generated; unknown names are tested by hand); and a
record of every call (operation and status) for the test's figures."""

from __future__ import annotations

import os
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


def _has_text(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return bool(content.strip())
    return isinstance(content, list) and any(
        isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"].strip()
        for part in content
    )


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Valid (positive) chat requests get what a valid request needs and the JSON schema cannot
    state: the served model's name (PARLANCE_FUZZ_MODEL), and, unless they regenerate an
    answer (a parent_message_id without new messages), a message with text. Negative ones
    keep what was generated, so that what makes them invalid stays."""
    model = os.environ.get("PARLANCE_FUZZ_MODEL")
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    body = case.body
    if not model or negative or not isinstance(body, dict):
        return case
    if case.operation.path == "/v1/embeddings":
        # Valid embedding requests name the served embedding model.
        if isinstance(body.get("model"), str):
            body["model"] = os.environ.get("PARLANCE_FUZZ_EMBED_MODEL", model)
        return case
    if case.operation.path != "/v1/chat/completions":
        return case
    if isinstance(body.get("model"), str):
        body["model"] = model
    messages = body.get("messages")
    if (
        isinstance(messages, list)
        and not body.get("parent_message_id")
        and not any(_has_text(m) for m in messages)
    ):
        messages.append({"role": "user", "content": "Hello"})
    return case


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """One line a call, `METHOD PATH STATUS`, in the file PARLANCE_FUZZ_CALLS names."""
    path = os.environ.get("PARLANCE_FUZZ_CALLS")
    if path:
        with open(path, "a", encoding="utf-8") as calls:
            calls.write(f"{case.method.upper()} {case.operation.path} {response.status_code}\n")
