"""Output moderation while a generation streams: StreamModerator holds back each choice's text
in the windows WindowCutter closes (moderation.py, which also says why), has each classified
while generation goes on, and releases a window's text only once it passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from parlance.gateway import convert, errors
from parlance.gateway.clients import SafetyClient
from parlance.gateway.clients.safety import BATCH_OWNER
from parlance.gateway.config import GatewaySettings
from parlance.gateway.metrics import MODERATION_FLAGS, MODERATION_HOLDBACK, MODERATION_WINDOWS
from parlance.gateway.moderation import (
    Event,
    FinishEvent,
    TextEvent,
    UsageEvent,
    WindowCutter,
    flagged_categories,
)
from parlance.gateway.stream_state import ChoiceBuffer, HeldWindow, Served
from parlance.gateway.verdicts import verdict_json
from parlance.generator.v1 import generator_pb2
from parlance.safety.v1 import safety_pb2

log = logging.getLogger(__name__)


_END = object()


class StreamModerator:
    """Turns the generator's responses into released events (see the module docstring)."""

    def __init__(self, safety: SafetyClient, settings: GatewaySettings, n: int) -> None:
        self.safety = safety
        self.cutter = WindowCutter.from_settings(settings)
        self.enabled = settings.moderate_output
        self.n = n
        self.retry_after_s = settings.retry_after_s
        # Every token the engine produced, released or not (for usage when a stream is cut).
        self.generated_tokens = 0
        # Per choice, the classifications of its windows that were judged (the stored verdict).
        self.results: dict[int, list[safety_pb2.Classification]] = {}
        self.classifier = ""

    def _buffer(self) -> ChoiceBuffer:
        return ChoiceBuffer(
            held_since=time.monotonic(), lead_pending=self.cutter.lead_after is not None
        )

    def verdict_json(self, index: int) -> str:
        """The choice's output verdict as history stores it ("" when nothing was classified)."""
        return verdict_json("output", self.results.get(index, []), self.classifier)

    def _cut(self, buffer: ChoiceBuffer, final: bool) -> str | None:
        """The text of the window to close now, if any."""
        first = not buffer.previous_window or buffer.after_lead
        return self.cutter.cut(buffer.text, first, final)

    def _close(
        self, buffer: ChoiceBuffer, index: int, window_text: str, final: bool = False
    ) -> HeldWindow:
        # Token counts and logprobs go with the window in which the text was held.
        first = not buffer.previous_window or buffer.after_lead
        window = HeldWindow(
            index=index,
            text=window_text,
            token_count=buffer.token_count,
            logprobs=buffer.logprobs,
            held_since=buffer.held_since,
            verdict=None,
            fragment=self.cutter.fragment(window_text, first, final),
        )
        if self.enabled and window_text.strip():
            MODERATION_WINDOWS.inc()
            # The task copies the context: its call joins a batch without another window of
            # this stream (clients/safety.py).
            owner = BATCH_OWNER.set(self)
            window.verdict = asyncio.create_task(
                self.safety.classify(
                    [buffer.previous_window + window_text], safety_pb2.DIRECTION_OUTPUT
                )
            )
            BATCH_OWNER.reset(owner)
        buffer.previous_window = window_text
        buffer.lead_pending = buffer.after_lead = False
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
        buffers = {i: self._buffer() for i in range(self.n)}
        try:
            async for response in stream:
                for delta in response.choices:
                    await self._take(buffers, delta, queue)
                if response.HasField("usage"):
                    await queue.put(
                        UsageEvent(response.usage.prompt_tokens, response.usage.completion_tokens)
                    )
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put(exc)
        finally:
            await queue.put(_END)

    async def _take(
        self,
        buffers: dict[int, ChoiceBuffer],
        delta: generator_pb2.ChoiceDelta,
        queue: asyncio.Queue[Any],
    ) -> None:
        """Holds back one choice's delta; queues the windows it closes and its finish."""
        if delta.finish_reason == generator_pb2.FINISH_REASON_ABORT:
            raise errors.service_unavailable(
                "The generation was aborted by the engine.", self.retry_after_s
            )
        buffer = buffers.get(delta.index) or buffers.setdefault(delta.index, self._buffer())
        if not buffer.text:
            buffer.held_since = time.monotonic()
        buffer.text += delta.text
        buffer.token_count += delta.token_count
        self.generated_tokens += delta.token_count
        buffer.logprobs.extend(delta.logprobs)
        final = bool(delta.finish_reason)
        while (cut := self._cut(buffer, final)) is not None:
            await queue.put(self._close(buffer, delta.index, cut, final))
        if not final:
            if buffer.lead_pending:
                waited = time.monotonic() - buffer.held_since
                if (lead := self.cutter.lead(buffer.text, waited)) is not None:
                    await queue.put(self._close(buffer, delta.index, lead))
                    buffer.after_lead = True
            return
        if buffer.token_count:
            # Tokens that produced no text (end of sequence) still count.
            await queue.put(HeldWindow(delta.index, "", buffer.token_count, [], 0.0, None))
            buffer.token_count = 0
        reason = convert.FINISH_REASONS.get(delta.finish_reason, "stop")
        await queue.put(FinishEvent(delta.index, reason))

    def events(self, stream: AsyncIterator[generator_pb2.GenerateResponse]) -> AsyncIterator[Event]:
        """The released events. With output moderation off nothing is held back, so the
        responses are turned into events as they are read, without the reader task and its
        queue (a task switch and two queue operations per token, measured ~10 % of the
        gateway's CPU per streamed token: bench/results/perf_cpu.md)."""
        return self._moderated(stream) if self.enabled else self._direct(stream)

    async def _direct(
        self, stream: AsyncIterator[generator_pb2.GenerateResponse]
    ) -> AsyncIterator[Event]:
        """Moderation off: each delta's text at once, as the window cutter would release it
        (tokens that produced no text yet wait for the next text, or for the finish)."""
        held: dict[int, ChoiceBuffer] = {}
        try:
            async for response in stream:
                for delta in response.choices:
                    if delta.finish_reason == generator_pb2.FINISH_REASON_ABORT:
                        raise errors.service_unavailable(
                            "The generation was aborted by the engine.", self.retry_after_s
                        )
                    self.generated_tokens += delta.token_count
                    event = self._direct_text(held, delta)
                    if event is not None:
                        yield event
                    if delta.finish_reason:
                        reason = convert.FINISH_REASONS.get(delta.finish_reason, "stop")
                        yield FinishEvent(delta.index, reason)
                if response.HasField("usage"):
                    yield UsageEvent(response.usage.prompt_tokens, response.usage.completion_tokens)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    @staticmethod
    def _direct_text(
        held: dict[int, ChoiceBuffer], delta: generator_pb2.ChoiceDelta
    ) -> TextEvent | None:
        """The delta's text with any tokens held for want of text (None: nothing to send
        yet). The common case, text and no held tokens, allocates no buffer."""
        buffer = held.get(delta.index)
        if buffer is None:
            if delta.text:
                return TextEvent(delta.index, delta.text, delta.token_count, list(delta.logprobs))
            if not delta.token_count and not delta.logprobs:
                return None
            buffer = held[delta.index] = ChoiceBuffer()
        buffer.token_count += delta.token_count
        buffer.logprobs.extend(delta.logprobs)
        if not delta.text and not delta.finish_reason:
            return None
        del held[delta.index]
        return TextEvent(delta.index, delta.text, buffer.token_count, buffer.logprobs)

    async def _moderated(
        self, stream: AsyncIterator[generator_pb2.GenerateResponse]
    ) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        reader = asyncio.create_task(self._read(stream, queue))
        served = Served(self.n)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                event = await self._release(item, served)
                if event is not None:
                    yield event
                if served.nothing_left:
                    # Every choice was flagged or had finished: stop generating.
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            while not queue.empty():
                left = queue.get_nowait()
                if isinstance(left, HeldWindow) and left.verdict is not None:
                    left.verdict.cancel()
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def _release(self, item: Any, served: Served) -> Event | None:
        """The event to hand on for a queued item (None: nothing, its choice was stopped)."""
        if isinstance(item, HeldWindow):
            return await self._judge(item, served)
        if isinstance(item, FinishEvent):
            if item.index in served.held:
                # A held fragment that nothing followed: its own verdict stands.
                return self._flag(served.held.pop(item.index), served)
            if item.index in served.flagged:
                return None
            served.finished.add(item.index)
        event: Event = item
        return event

    async def _judge(self, window: HeldWindow, served: Served) -> Event | None:
        """The window's text once safety passed it; a flag ends its choice instead."""
        if window.index in served.flagged:
            if window.verdict is not None:
                window.verdict.cancel()
            return None
        held = served.held.pop(window.index, None)
        if window.verdict is None:
            if held is not None:  # no verdict covers the held fragment
                return self._flag(held, served)
            return TextEvent(window.index, window.text, window.token_count, window.logprobs)
        response = await window.verdict
        result = window.result = response.results[0]
        self.classifier = response.model
        MODERATION_HOLDBACK.observe(time.monotonic() - window.held_since)
        if result.flagged and window.fragment and held is None:
            served.held[window.index] = window
            return None
        if result.flagged:
            return self._flag(window, served)
        self.results.setdefault(window.index, []).append(result)
        if held is None:
            return TextEvent(window.index, window.text, window.token_count, window.logprobs)
        # This verdict covers the held fragment too (classified with the window before).
        return TextEvent(
            window.index,
            held.text + window.text,
            held.token_count + window.token_count,
            held.logprobs + window.logprobs,
        )

    def _flag(self, window: HeldWindow, served: Served) -> FinishEvent:
        """Ends the window's choice on its flagged verdict."""
        categories = []
        if window.result is not None:
            self.results.setdefault(window.index, []).append(window.result)
            categories = flagged_categories(window.result)
        for category in categories or ["flagged"]:
            MODERATION_FLAGS.labels("output", category).inc()
        log.info("output stopped by moderation", extra={"choice": window.index})
        served.flag(window.index)
        return FinishEvent(window.index, "content_filter")
