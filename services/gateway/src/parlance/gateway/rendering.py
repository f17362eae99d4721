"""The OpenAI response shapes of a chat completion: the plain body and the SSE chunks of a
stream (live or replayed from the cache)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from parlance.gateway.cache import CompletionRecord

if TYPE_CHECKING:
    from parlance.gateway.serving import PreparedChat


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class ChunkWriter:
    """Builds the `chat.completion.chunk` events of one stream."""

    def __init__(self, prepared: PreparedChat, include_usage: bool) -> None:
        self.base: dict[str, Any] = {
            "id": prepared.completion_id,
            "object": "chat.completion.chunk",
            "created": prepared.created,
            "model": prepared.model,
            "system_fingerprint": None,
        }
        if prepared.conversation_id:
            self.base["conversation_id"] = prepared.conversation_id
        self.include_usage = include_usage

    def _event(self, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        payload = {**self.base, "choices": choices}
        if self.include_usage:
            payload["usage"] = usage
        return sse(payload)

    def role(self, index: int) -> bytes:
        return self._event(
            [
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def content(self, index: int, text: str, logprobs: dict[str, Any] | None) -> bytes:
        return self._event(
            [
                {
                    "index": index,
                    "delta": {"content": text},
                    "logprobs": logprobs,
                    "finish_reason": None,
                }
            ]
        )

    def finish(self, index: int, reason: str) -> bytes:
        return self._event(
            [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]
        )

    def usage(self, record: CompletionRecord) -> bytes:
        return self._event([], usage=usage_json(record))


def usage_json(record: CompletionRecord) -> dict[str, int]:
    return {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.prompt_tokens + record.completion_tokens,
    }


def render_completion(prepared: PreparedChat, record: CompletionRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": prepared.completion_id,
        "object": "chat.completion",
        "created": prepared.created,
        "model": record.model,
        "choices": [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text, "refusal": None},
                "logprobs": None,
                "finish_reason": choice.finish_reason or "stop",
            }
            for choice in record.choices
        ],
        "usage": usage_json(record),
        "system_fingerprint": None,
    }
    if prepared.conversation_id:
        body["conversation_id"] = prepared.conversation_id
    return body
