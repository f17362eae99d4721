"""Stage 3 of a chat completion: metrics and the log line, the cache write, the history write
and the conversation's title."""

from __future__ import annotations

import logging
import time
import uuid

from parlance.gateway import convert
from parlance.gateway.cache import CachedChoice, CompletionRecord, ResponseCache
from parlance.gateway.chat import compare
from parlance.gateway.chat.prepared import PreparedChat, Progress
from parlance.gateway.metrics import TOKENS, TPOT, TTFT
from parlance.gateway.outbox import HistoryOutbox
from parlance.gateway.titles import TitleWriter, provisional_title
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)


class Completion:
    def __init__(self, cache: ResponseCache, outbox: HistoryOutbox, titles: TitleWriter) -> None:
        self.cache = cache
        self.outbox = outbox
        self.titles = titles

    async def finish(
        self, prepared: PreparedChat, progress: Progress, record: CompletionRecord
    ) -> None:
        """Everything a complete answer leaves behind: metrics, cache entry, stored exchange."""
        observe(prepared, progress, record)
        compare.observe(prepared, record)
        complete = all(c.finish_reason in ("stop", "length") for c in record.choices)
        # An answer given with care is not cached: a cache hit skips input moderation, so it
        # would come back without the care the request was judged to need (its headers).
        if prepared.cache_key and complete and not prepared.care:
            await self.cache.put(prepared.cache_key, record)
        await self.store_exchange(prepared, record, progress)

    async def store_exchange(
        self, prepared: PreparedChat, record: CompletionRecord, progress: Progress | None = None
    ) -> None:
        if prepared.conversation_id is None:
            return
        first_user = next((text for role, text in prepared.new_messages if role == "user"), "")
        written = await self.outbox.submit(
            history_pb2.AppendMessagesRequest(
                user_id=prepared.principal.user_id,
                conversation_id=prepared.conversation_id,
                messages=exchange_messages(prepared, record, progress),
                create_if_missing=prepared.create_conversation,
                title=provisional_title(first_user),
            )
        )
        # The first exchange of a new conversation gets the model's title, in the background.
        # An exchange left in the outbox (history down) keeps its provisional title: the
        # conversation the title would go to does not exist yet. A cache hit gets none: the
        # answer cost no generation, and neither may its title (nobody pays for it).
        # Nor does an exchange answered with care: the title model would read the message
        # without the care prompt.
        if written and prepared.create_conversation and not prepared.cached and not prepared.care:
            self.titles.schedule(
                prepared.principal.user_id,
                prepared.conversation_id,
                prepared.model,
                first_user,
                record.choices[0].text,
            )


def observe(prepared: PreparedChat, progress: Progress, record: CompletionRecord) -> None:
    """Token counters, time to first token and per output token, and one log line per
    completed request: ids, sizes and timings, never the text."""
    model = prepared.model
    key_id = prepared.principal.key_id
    TOKENS.labels("prompt", model, key_id).inc(record.prompt_tokens)
    TOKENS.labels("completion", model, key_id).inc(record.completion_tokens)
    log.info(
        "chat completion",
        extra={
            "model": model,
            "key_id": key_id,
            "completion_id": prepared.completion_id,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "finish_reasons": [c.finish_reason for c in record.choices],
            "duration_ms": round((time.monotonic() - prepared.started) * 1000, 1),
        },
    )
    if progress.first_token_at is None:
        return
    TTFT.labels(model).observe(progress.first_token_at - prepared.started)
    if progress.tokens_after_first > 0 and progress.last_token_at is not None:
        TPOT.labels(model).observe(
            (progress.last_token_at - progress.first_token_at) / progress.tokens_after_first
        )


def exchange_messages(
    prepared: PreparedChat, record: CompletionRecord, progress: Progress | None
) -> list[history_pb2.Message]:
    """The request's messages and the (first choice's) answer, as history stores them; in a
    comparison both candidates, as sibling answers (chat/compare.py)."""
    verdicts = prepared.input_verdicts or [""] * len(prepared.new_messages)
    messages = [
        history_pb2.Message(
            id=f"msg_{uuid.uuid4().hex}",
            role=convert.stored_role(role),
            content=text,
            moderation_json=verdict,
        )
        for (role, text), verdict in zip(prepared.new_messages, verdicts, strict=True)
    ]
    if prepared.intent is not None and prepared.intent.classified:
        # The classified message is the request's newest user message (chat/intent.py); a
        # failed classification stores no intent (unknown, not "default").
        newest = next((m for m in reversed(messages) if m.role == "user"), None)
        if newest is not None:
            newest.intent = prepared.intent.name
    first_answer = len(messages)
    for answer, message_id in compare.stored_answers(prepared, record):
        assistant = _answer_message(prepared, record, answer, message_id, progress)
        if len(messages) > first_answer:
            # A comparison's second answer: the generation's usage is on the first one.
            assistant.ClearField("usage")
        messages.append(assistant)
    if prepared.parent_message_id is not None:
        # Only the first message names its parent; the others chain below it.
        messages[0].parent_id = prepared.parent_message_id
    compare.branch_siblings(messages, first_answer)
    return messages


def _answer_message(
    prepared: PreparedChat,
    record: CompletionRecord,
    answer: CachedChoice,
    message_id: str,
    progress: Progress | None,
) -> history_pb2.Message:
    assistant = history_pb2.Message(
        id=message_id,
        role="assistant",
        content=answer.text,
        model=record.model,
        usage=history_pb2.Usage(
            prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens
        ),
        finish_reason=answer.finish_reason or "",
        moderation_json=answer.moderation_json,
        # The model's answer, never text a client sent as "assistant": only such answers are
        # training targets.
        generated=True,
    )
    if progress is not None and progress.first_token_at is not None:
        assistant.time_to_first_token_ms = int((progress.first_token_at - prepared.started) * 1000)
        assistant.total_time_ms = int((time.monotonic() - prepared.started) * 1000)
    return assistant
