"""The OpenAI response of a chat completion: the `chat.completion` body, and the SSE events of
a stream (live or replayed from the cache), built as the typed models of chat/protocol.py."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from parlance.gateway.cache import CachedChoice, CompletionRecord
from parlance.gateway.chat import compare
from parlance.gateway.chat.prepared import PreparedChat
from parlance.gateway.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    IntentInfo,
    ParlanceExtension,
    Usage,
)

DONE = b"data: [DONE]\n\n"


def dump(model: BaseModel) -> bytes:
    """The model's JSON without the fields left unset (model_dump_json(exclude_unset=True),
    as bytes)."""
    return type(model).__pydantic_serializer__.to_json(model, exclude_unset=True)


def sse(data: bytes) -> bytes:
    """One server-sent event carrying `data` (JSON on one line)."""
    return b"data: " + data + b"\n\n"


def usage_of(record: CompletionRecord) -> Usage:
    return Usage(
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        total_tokens=record.prompt_tokens + record.completion_tokens,
    )


class ChunkWriter:
    """Builds the `chat.completion.chunk` events of one stream.

    Every chunk of a stream has the same id, created, model, system_fingerprint,
    conversation_id (and `"usage": null` with include_usage): that frame is a
    ChatCompletionChunk serialized once, and each event serializes only its ChunkChoice into
    it. Same bytes as serializing a whole ChatCompletionChunk per event, at a third of the
    cost per token (measured against json.dumps of a dict, the rendering this replaced)."""

    def __init__(self, prepared: PreparedChat) -> None:
        self.prepared = prepared
        # The extension object goes on the stream's first chunk only.
        self._extension = extension(prepared)
        frame = self._chunk([])
        if prepared.include_usage:
            frame.usage = None
        data = sse(dump(frame))
        cut = data.index(_EMPTY_CHOICES) + len(_EMPTY_CHOICES) - 1
        self._head, self._tail = data[:cut], data[cut:]

    def _chunk(self, choices: list[ChunkChoice]) -> ChatCompletionChunk:
        prepared = self.prepared
        chunk = ChatCompletionChunk(
            id=prepared.completion_id,
            object="chat.completion.chunk",
            created=prepared.created,
            model=prepared.model,
            choices=choices,
            system_fingerprint=None,
        )
        if prepared.conversation_id:
            chunk.conversation_id = prepared.conversation_id
        return chunk

    def _event(self, choice: ChunkChoice) -> bytes:
        return self._head + dump(choice) + self._tail

    def role(self, index: int) -> bytes:
        choice = ChunkChoice(
            index=index,
            delta=DeltaMessage(role="assistant", content=""),
            logprobs=None,
            finish_reason=None,
        )
        if self._extension is None:
            return self._event(choice)
        chunk = self._chunk([choice])
        if self.prepared.include_usage:
            chunk.usage = None
        chunk.parlance, self._extension = self._extension, None
        return sse(dump(chunk))

    def content(self, index: int, text: str, logprobs: ChoiceLogprobs | None) -> bytes:
        if logprobs is None:
            # The common event, text only: its bytes from a template, the text encoded by the
            # json module's C encoder; the same bytes as the models' (test_chunk_template),
            # at a fraction of building and serializing two models per token.
            return b"".join(
                (
                    self._head,
                    b'{"index":%d,"delta":{"content":' % index,
                    _json_string(text),
                    b'},"logprobs":null,"finish_reason":null}',
                    self._tail,
                )
            )
        return self._event(
            ChunkChoice(
                index=index,
                delta=DeltaMessage(content=text),
                logprobs=logprobs,
                finish_reason=None,
            )
        )

    def finish(self, index: int, reason: str) -> bytes:
        return self._event(
            ChunkChoice(index=index, delta=DeltaMessage(), logprobs=None, finish_reason=reason)
        )

    def usage(self, record: CompletionRecord) -> bytes:
        """The last chunk with include_usage: no choices, the usage of the whole answer."""
        chunk = self._chunk([])
        chunk.usage = usage_of(record)
        return sse(dump(chunk))


# Where a frame's choices go: the serialized frame has no choices.
_EMPTY_CHOICES = b'"choices":[]'

# A str as a JSON string, UTF-8 as pydantic writes it (not \u-escaped).
_JSON_STRING = json.JSONEncoder(ensure_ascii=False).encode


def _json_string(text: str) -> bytes:
    return _JSON_STRING(text).encode()


def extension(prepared: PreparedChat) -> ParlanceExtension | None:
    """The response's Parlance extension object (None: nothing to add)."""
    match = prepared.intent
    comparison = prepared.comparison
    if match is None and comparison is None and prepared.best_of is None and not prepared.care:
        return None
    added = ParlanceExtension(care=prepared.care or None)
    if match is not None:
        added.intent = IntentInfo(
            name=match.name, score=round(match.score, 4), fallback=match.fallback
        )
    if comparison is not None:
        added.comparison = comparison.info()
    if prepared.best_of is not None:
        added.best_of = prepared.best_of
    return added


def delta_logprobs(choice: CachedChoice, delta: int) -> ChoiceLogprobs | None:
    """The logprobs of one cached delta (None when the answer has none)."""
    tokens = choice.logprobs[delta] if delta < len(choice.logprobs) else []
    return ChoiceLogprobs.model_validate({"content": tokens, "refusal": None}) if tokens else None


def cached_logprobs(record: CompletionRecord) -> dict[int, ChoiceLogprobs | None]:
    """Each cached choice's logprobs, as a complete answer carries them."""
    return {
        choice.index: ChoiceLogprobs.model_validate(
            {"content": [t for tokens in choice.logprobs for t in tokens], "refusal": None}
        )
        if choice.logprobs
        else None
        for choice in record.choices
    }


def completion(
    prepared: PreparedChat,
    record: CompletionRecord,
    logprobs: dict[int, ChoiceLogprobs | None] | None = None,
) -> ChatCompletion:
    """The `chat.completion` body of a finished (or cached) answer, validated as a
    ChatCompletion in one call (pydantic-core builds the nested models: faster than building
    each in Python, and than the json.dumps of a dict this replaced)."""
    body: dict[str, Any] = {
        "id": prepared.completion_id,
        "object": "chat.completion",
        "created": prepared.created,
        "model": record.model,
        "choices": [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text, "refusal": None},
                "logprobs": (logprobs or {}).get(choice.index),
                "finish_reason": choice.finish_reason or "stop",
            }
            for choice in record.choices
        ],
        "usage": {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens,
        },
        "system_fingerprint": None,
    }
    if prepared.conversation_id:  # set only in a stored conversation: absent otherwise
        body["conversation_id"] = prepared.conversation_id
    added = extension(prepared)
    if added is not None and added.comparison is not None:
        # A whole answer knows what was stored: with one candidate flagged (or both) it is an
        # ordinary answer, so it names no comparison (a pick of the withheld id would be a
        # 404). A stream names both ids up front; its flagged choice's content_filter says so.
        if len(compare.stored_answers(prepared, record)) < compare.CANDIDATES:
            added.comparison = None
    if added is not None and (dumped := added.model_dump(exclude_none=True)):
        body["parlance"] = dumped
    return ChatCompletion.model_validate(body)
