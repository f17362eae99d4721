"""Moderation of the input (before generation) and of the output (while it streams).

Output moderation holds back generated text in windows: the first closes at a word boundary
past `first` characters (time to first token), the others at a sentence end once they have
`min` characters, or at `max` characters. Each closed window is sent to safety at once,
while generation goes on, and its text is released to the client only after it passed. On a
flag the choice ends with `finish_reason: "content_filter"`, none of the flagged window is
sent, and the generation is cancelled once no choice is left to serve. Classification runs
concurrently with generation, so the hold-back costs one classification of the first window
in time to first token and close to nothing per token after it.

Each window is classified together with the window before it, so that a sentence split across
two windows is still seen whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from parlance.gateway import convert, errors
from parlance.gateway.clients import SafetyClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.metrics import MODERATION_FLAGS, MODERATION_HOLDBACK, MODERATION_WINDOWS
from parlance.generator.v1 import generator_pb2
from parlance.safety.v1 import safety_pb2

log = logging.getLogger(__name__)

SENTENCE_ENDS = ".!?\n。！？"


def flagged_categories(result: safety_pb2.Classification) -> list[str]:
    return sorted({c.category for c in result.categories if c.flagged})


async def moderate_input(safety: SafetyClient, texts: list[str]) -> None:
    """Raises 400 content_filter when any text is flagged (safety down: 503, fail closed)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        return
    verdicts = await safety.classify(texts, safety_pb2.DIRECTION_INPUT)
    categories = sorted({c for v in verdicts.results if v.flagged for c in flagged_categories(v)})
    if not any(v.flagged for v in verdicts.results):
        return
    for category in categories or ["flagged"]:
        MODERATION_FLAGS.labels("input", category).inc()
    log.info("input refused by moderation", extra={"categories": categories})
    raise errors.content_filtered(
        "The response was filtered due to the prompt triggering the content management "
        f"policy ({', '.join(categories) or 'flagged'}). Please modify your prompt and retry."
    )


# --- Events the serving layer turns into chunks ---------------------------------------------


@dataclass
class TextEvent:
    index: int
    text: str
    token_count: int
    logprobs: list[Any] = field(default_factory=list)


@dataclass
class FinishEvent:
    index: int
    reason: str


@dataclass
class UsageEvent:
    prompt_tokens: int
    completion_tokens: int


Event = TextEvent | FinishEvent | UsageEvent


@dataclass
class _Window:
    index: int
    text: str
    token_count: int
    logprobs: list[Any]
    held_since: float
    verdict: asyncio.Task[safety_pb2.ClassifyResponse] | None


@dataclass
class _ChoiceBuffer:
    text: str = ""
    token_count: int = 0
    logprobs: list[Any] = field(default_factory=list)
    held_since: float = 0.0
    previous_window: str = ""


_END = object()


class StreamModerator:
    """Turns the generator's responses into released events (see the module docstring)."""

    def __init__(self, safety: SafetyClient, settings: GatewaySettings, n: int) -> None:
        self.safety = safety
        self.enabled = settings.moderate_output
        self.first_chars = settings.moderation_first_window_chars
        self.min_chars = settings.moderation_window_min_chars
        self.max_chars = settings.moderation_window_max_chars
        self.n = n
        self.retry_after_s = settings.retry_after_s
        # Every token the engine produced, released or not (for usage when a stream is cut).
        self.generated_tokens = 0

    def _cut(self, buffer: _ChoiceBuffer, final: bool) -> str | None:
        """The text of the window to close now, if any."""
        text = buffer.text
        if not text:
            return None
        if final or not self.enabled:
            return text
        if not buffer.previous_window and len(text) >= self.first_chars:
            # The first window is short and closes at a word boundary, not a sentence end:
            # what the client waits for before the first token is this window's generation
            # plus one classification.
            space = text.rfind(" ", self.first_chars // 2)
            if space > 0:
                return text[: space + 1]
        if len(text) >= self.max_chars:
            # Cut at the last space inside the limit, so words are classified whole.
            space = text.rfind(" ", self.min_chars, self.max_chars)
            return text[: space + 1] if space > 0 else text[: self.max_chars]
        if len(text) >= self.min_chars:
            last_end = max(text.rfind(ch) for ch in SENTENCE_ENDS)
            if last_end >= self.min_chars - 1:
                return text[: last_end + 1]
        return None

    def _close(self, buffer: _ChoiceBuffer, index: int, window_text: str) -> _Window:
        # Token counts and logprobs go with the window in which the text was held.
        window = _Window(
            index=index,
            text=window_text,
            token_count=buffer.token_count,
            logprobs=buffer.logprobs,
            held_since=buffer.held_since,
            verdict=None,
        )
        if self.enabled and window_text.strip():
            MODERATION_WINDOWS.inc()
            window.verdict = asyncio.create_task(
                self.safety.classify(
                    [buffer.previous_window + window_text], safety_pb2.DIRECTION_OUTPUT
                )
            )
        buffer.previous_window = window_text
        buffer.text = buffer.text[len(window_text) :]
        buffer.token_count = 0
        buffer.logprobs = []
        buffer.held_since = time.monotonic()
        return window

    async def _read(
        self,
        stream: AsyncIterator[generator_pb2.GenerateResponse],
        queue: asyncio.Queue[Any],
    ) -> None:
        buffers = {i: _ChoiceBuffer(held_since=time.monotonic()) for i in range(self.n)}
        try:
            async for response in stream:
                for delta in response.choices:
                    if delta.finish_reason == generator_pb2.FINISH_REASON_ABORT:
                        raise errors.service_unavailable(
                            "The generation was aborted by the engine.", self.retry_after_s
                        )
                    buffer = buffers.setdefault(delta.index, _ChoiceBuffer())
                    if not buffer.text:
                        buffer.held_since = time.monotonic()
                    buffer.text += delta.text
                    buffer.token_count += delta.token_count
                    self.generated_tokens += delta.token_count
                    buffer.logprobs.extend(delta.logprobs)
                    final = bool(delta.finish_reason)
                    while (cut := self._cut(buffer, final)) is not None:
                        await queue.put(self._close(buffer, delta.index, cut))
                    if buffer.token_count and final:
                        # Tokens that produced no text (end of sequence) still count.
                        await queue.put(_Window(delta.index, "", buffer.token_count, [], 0.0, None))
                        buffer.token_count = 0
                    if final:
                        reason = convert.FINISH_REASONS.get(delta.finish_reason, "stop")
                        await queue.put(FinishEvent(delta.index, reason))
                if response.HasField("usage"):
                    await queue.put(
                        UsageEvent(response.usage.prompt_tokens, response.usage.completion_tokens)
                    )
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put(exc)
        finally:
            await queue.put(_END)

    async def events(
        self, stream: AsyncIterator[generator_pb2.GenerateResponse]
    ) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        reader = asyncio.create_task(self._read(stream, queue))
        flagged: set[int] = set()
        finished: set[int] = set()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, _Window):
                    if item.index in flagged:
                        if item.verdict is not None:
                            item.verdict.cancel()
                        continue
                    if item.verdict is not None:
                        verdict = await item.verdict
                        result = verdict.results[0]
                        MODERATION_HOLDBACK.observe(time.monotonic() - item.held_since)
                        if result.flagged:
                            for category in flagged_categories(result) or ["flagged"]:
                                MODERATION_FLAGS.labels("output", category).inc()
                            log.info("output stopped by moderation", extra={"choice": item.index})
                            flagged.add(item.index)
                            yield FinishEvent(item.index, "content_filter")
                            if len(flagged | finished) >= self.n:
                                # Nothing left to serve: stop generating.
                                reader.cancel()
                                break
                            continue
                    yield TextEvent(item.index, item.text, item.token_count, item.logprobs)
                elif isinstance(item, FinishEvent):
                    if item.index not in flagged:
                        finished.add(item.index)
                        yield item
                else:
                    yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            while not queue.empty():
                left = queue.get_nowait()
                if isinstance(left, _Window) and left.verdict is not None:
                    left.verdict.cancel()
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
