"""Conversation titles written by the model, in the background after the first exchange.

A conversation created by `store: true` starts with a provisional title (its first question,
truncated). The model's short title replaces it a moment later, without delaying the answer.
The title request is the gateway's own: it goes straight to the generator, so it counts against
no user's rate limits and is neither cached nor stored as a message. The title is model output
shown to the user, so it passes output moderation like any answer; a flagged, empty or failed
title leaves the provisional one. A title the user changed meanwhile is never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from parlance.gateway.clients import GeneratorClient, HistoryClient, SafetyClient
from parlance.gateway.errors import APIError
from parlance.gateway.metrics import TITLES
from parlance.generator.v1 import generator_pb2
from parlance.history.v1 import history_pb2
from parlance.safety.v1 import safety_pb2

log = logging.getLogger(__name__)

TITLE_MAX_CHARS = 60
TITLE_MAX_TOKENS = 16
# The exchange shown to the model is cut short: a title needs the gist, and the prompt must fit
# small context windows.
_QUESTION_CHARS = 400
_ANSWER_CHARS = 200

INSTRUCTION = (
    "You write titles for chat conversations. Reply with a title of at most six words that "
    "says what the conversation is about. Reply with the title only: no quotes, no "
    "punctuation at the end, no explanation."
)

_PREFIX = re.compile(r"^(title|conversation title)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»*#"


def provisional_title(text: str, limit: int = TITLE_MAX_CHARS) -> str:
    """The title a conversation gets at once: its first question on one line, truncated
    (at a word's end where one is near) with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space >= limit // 2:  # a whole word fits well: do not cut one in two
        head = head[:space]
    return head.rstrip(" ,;:-") + "…"


def clean_title(raw: str, limit: int = TITLE_MAX_CHARS, *, cut: bool = False) -> str:
    """The model's answer as a title: its first non-empty line without a "Title:" prefix,
    quotes or a final period, on one line, at most `limit` characters ("" when nothing is
    left). `cut`: the answer stopped at its token limit, so when that line is all of it, its
    last word may be a piece of one: it is dropped and an ellipsis says the title goes on."""
    lines = [part for part in raw.splitlines() if part.strip()]
    line = lines[0] if lines else ""
    line = _PREFIX.sub("", line.strip())
    line = line.strip().strip(_QUOTES).strip()
    if cut and len(lines) == 1 and " " in line:
        return provisional_title(line.rsplit(" ", 1)[0].rstrip(" ,;:-") + "…", limit)
    line = line.rstrip(".").strip().strip(_QUOTES).strip()
    return provisional_title(line, limit)


def title_messages(question: str, answer: str) -> list[generator_pb2.ChatMessage]:
    exchange = f"User: {question[:_QUESTION_CHARS]}"
    if answer:
        exchange += f"\nAssistant: {answer[:_ANSWER_CHARS]}"
    return [
        generator_pb2.ChatMessage(role="system", content=INSTRUCTION),
        generator_pb2.ChatMessage(
            role="user", content=f"Write a title for this conversation:\n\n{exchange}"
        ),
    ]


async def apply_title(
    history: HistoryClient, user_id: str, conversation_id: str, provisional: str, title: str
) -> bool:
    """Sets `title` unless the conversation's title is no longer the provisional one (the user
    renamed it). True when set. A rename between the read and the write is not seen: the
    history contract has no conditional update, and the window is one RPC long."""
    reply = await history.get_conversation(
        history_pb2.GetConversationRequest(user_id=user_id, conversation_id=conversation_id),
    )
    if reply.conversation.title != provisional:
        return False
    await history.update_conversation(
        history_pb2.UpdateConversationRequest(
            user_id=user_id, conversation_id=conversation_id, title=title
        ),
    )
    return True


class TitleWriter:
    """Starts and tracks the background title tasks of one gateway process."""

    def __init__(
        self,
        generator: GeneratorClient,
        safety: SafetyClient,
        history: HistoryClient,
        enabled: bool = True,
    ) -> None:
        self.generator = generator
        self.safety = safety
        self.history = history
        self.enabled = enabled
        # The event loop keeps only weak references to tasks: without these, a pending title
        # task could be garbage-collected mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(
        self, user_id: str, conversation_id: str, model: str, question: str, answer: str
    ) -> None:
        if not self.enabled or not question.strip():
            return
        task = asyncio.create_task(
            self._run(user_id, conversation_id, model, question, answer),
            name=f"title-{conversation_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(
        self, user_id: str, conversation_id: str, model: str, question: str, answer: str
    ) -> None:
        # Never raises: a title is a nicety, and nobody awaits this task.
        try:
            outcome = await self._write(user_id, conversation_id, model, question, answer)
        except asyncio.CancelledError:
            TITLES.labels("cancelled").inc()
            raise
        except APIError as exc:
            log.warning("title generation failed: %s", exc.message)
            outcome = "failed"
        except Exception:
            log.exception("title generation failed")
            outcome = "failed"
        TITLES.labels(outcome).inc()

    async def _write(
        self, user_id: str, conversation_id: str, model: str, question: str, answer: str
    ) -> str:
        text, cut = await self.generate(model, question, answer)
        title = clean_title(text, cut=cut)
        provisional = provisional_title(question)
        if not title or title == provisional:
            return "empty"
        verdicts = await self.safety.classify([title], safety_pb2.DIRECTION_OUTPUT)
        if any(v.flagged for v in verdicts.results):
            return "flagged"
        if not await apply_title(self.history, user_id, conversation_id, provisional, title):
            return "renamed"
        return "set"

    async def generate(self, model: str, question: str, answer: str) -> tuple[str, bool]:
        """The model's title text, and whether it stopped at the token limit."""
        request = generator_pb2.GenerateRequest(
            request_id=f"title-{uuid.uuid4().hex}",
            model=model,
            chat=generator_pb2.ChatInput(messages=title_messages(question, answer)),
            sampling=generator_pb2.SamplingParams(
                max_tokens=TITLE_MAX_TOKENS, temperature=0.0, n=1
            ),
        )
        parts: list[str] = []
        cut = False
        async for response in self.generator.generate(request):
            for choice in response.choices:
                parts.append(choice.text)
                cut = cut or choice.finish_reason == generator_pb2.FINISH_REASON_LENGTH
        return "".join(parts), cut
