"""The checks a chat request passes before anything is reserved or generated (400 otherwise).

The schema (chat/protocol.py) checks types and ranges; these are the rules that depend on the
settings, the key's limits, or several fields at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.chat.protocol import ChatCompletionRequest, ChatMessage
from parlance.gateway.config import GatewaySettings

# Text no store can keep: PostgreSQL refuses NUL in text, and UTF-8 (so protobuf) has no
# encoding for a surrogate code point on its own.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# OpenAI's bounds of metadata; stop and user have none there, these are generous.
MAX_STOP_CHARS = 256
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_USER_CHARS = 256

_UNSUPPORTED = {
    "tools": "Tool calling is not supported by this server.",
    "tool_choice": "Tool calling is not supported by this server.",
    "logit_bias": "logit_bias is not supported by this server.",
}


def validate(
    request: ChatCompletionRequest, principal: Principal, settings: GatewaySettings
) -> None:
    """Raises the 400 of the first rule the request breaks."""
    for param, text in _texts(request):
        if text and _UNSTORABLE.search(text):
            raise errors.invalid_request(
                f"Invalid value for '{param}': text must not contain NUL (U+0000) or unpaired "
                "surrogates (U+D800 to U+DFFF).",
                param=param,
            )
    _check_bounds(request)
    _check_supported(request)
    _check_messages(request, settings)
    _check_options(request, principal, settings)


def _texts(request: ChatCompletionRequest) -> Iterator[tuple[str, str | None]]:
    """Every text field of the request with its param name."""
    yield "model", request.model
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                yield f"messages.{i}.content.{j}.text", part.text
        else:
            yield f"messages.{i}.content", message.content
        yield f"messages.{i}.name", message.name
    yield from _stops(request)
    yield "user", request.user
    for key, value in (request.metadata or {}).items():
        yield "metadata", key
        yield f"metadata.{key}", value
    yield "conversation_id", request.conversation_id
    yield "parent_message_id", request.parent_message_id


def _stops(request: ChatCompletionRequest) -> Iterator[tuple[str, str]]:
    if isinstance(request.stop, str):
        yield "stop", request.stop
    for i, stop in enumerate(request.stop if isinstance(request.stop, list) else []):
        yield f"stop.{i}", stop


def _check_bounds(request: ChatCompletionRequest) -> None:
    for param, stop in _stops(request):
        if len(stop) > MAX_STOP_CHARS:
            raise errors.invalid_request(
                f"A stop sequence is at most {MAX_STOP_CHARS} characters.", param=param
            )
    if request.user is not None and len(request.user) > MAX_USER_CHARS:
        raise errors.invalid_request(f"user is at most {MAX_USER_CHARS} characters.", "user")
    metadata = request.metadata or {}
    if len(metadata) > MAX_METADATA_PAIRS:
        raise errors.invalid_request(
            f"metadata has at most {MAX_METADATA_PAIRS} key-value pairs.", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise errors.invalid_request(
                f"metadata keys are at most {MAX_METADATA_KEY_CHARS} characters.", "metadata"
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise errors.invalid_request(
                f"metadata values are at most {MAX_METADATA_VALUE_CHARS} characters.",
                param=f"metadata.{key}",
            )


def _check_supported(request: ChatCompletionRequest) -> None:
    for name, message in _UNSUPPORTED.items():
        if getattr(request, name):
            raise errors.invalid_request(message, param=name)
    if request.response_format and request.response_format.type != "text":
        raise errors.invalid_request(
            "Only response_format type 'text' is supported.", param="response_format.type"
        )


def _check_messages(request: ChatCompletionRequest, settings: GatewaySettings) -> None:
    # An empty list is only a regenerate: answer again below parent_message_id.
    regenerate = request.conversation_id is not None and request.parent_message_id is not None
    if not request.messages and not regenerate:
        raise errors.invalid_request(
            "messages must contain at least one message.", param="messages"
        )
    if len(request.messages) > settings.max_messages:
        raise errors.invalid_request(
            f"Too many messages: at most {settings.max_messages}.", param="messages"
        )
    total = 0
    for i, message in enumerate(request.messages):
        _check_message(i, message)
        total += len(message.text())
    if total > settings.max_input_chars:
        raise errors.invalid_request(
            f"The messages total {total} characters; the limit is {settings.max_input_chars}.",
            param="messages",
            code="context_length_exceeded",
        )


def _check_message(i: int, message: ChatMessage) -> None:
    if message.role in ("tool", "function"):
        raise errors.invalid_request(
            f"Role '{message.role}' is not supported (no tool calling).",
            param=f"messages.{i}.role",
        )
    if isinstance(message.content, list):
        for part in message.content:
            if part.type != "text":
                raise errors.invalid_request(
                    f"Content part type '{part.type}' is not supported; send text.",
                    param=f"messages.{i}.content",
                )


def max_tokens_limit(principal: Principal, settings: GatewaySettings) -> int:
    """The most completion tokens a choice of this key may get: the key's limit, else the
    gateway's."""
    return principal.limits.max_tokens or settings.max_tokens_limit


def effective_max_tokens(
    request: ChatCompletionRequest, principal: Principal, settings: GatewaySettings
) -> int:
    """What the generator is asked for: the request's max_tokens (validated to be within the
    limit), or when it sets none GATEWAY_DEFAULT_MAX_TOKENS, else the limit itself, so that
    leaving it out never lifts the limit. The min() holds for an intent route's max_tokens,
    set after validation, and for a default above a key's own limit."""
    limit = max_tokens_limit(principal, settings)
    return min(request.requested_max_tokens() or settings.default_max_tokens or limit, limit)


def ignore_eos_allowed(principal: Principal, settings: GatewaySettings) -> bool:
    """ignore_eos (vLLM's benchmark extension) makes every answer as long as max_tokens: only
    for the users GATEWAY_IGNORE_EOS_USERS names (benchmarks)."""
    allowed = {u.strip() for u in settings.ignore_eos_users.split(",") if u.strip()}
    return principal.user_id in allowed


def _check_options(
    request: ChatCompletionRequest, principal: Principal, settings: GatewaySettings
) -> None:
    if request.ignore_eos and not ignore_eos_allowed(principal, settings):
        raise errors.invalid_request("ignore_eos is not allowed for this key.", "ignore_eos")
    limit = max_tokens_limit(principal, settings)
    max_tokens = request.requested_max_tokens()
    if max_tokens is not None and max_tokens > limit:
        raise errors.invalid_request(
            f"max_tokens is too large: {max_tokens}. This key allows at most {limit}.",
            param="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        )
    if (request.n or 1) > settings.max_n:
        raise errors.invalid_request(f"n must be at most {settings.max_n}.", param="n")
    if request.top_logprobs and not request.logprobs:
        raise errors.invalid_request(
            "top_logprobs requires logprobs to be true.", param="top_logprobs"
        )
    if request.stream_options is not None and not request.stream:
        raise errors.invalid_request(
            "stream_options is only allowed when stream is true.", param="stream_options"
        )
