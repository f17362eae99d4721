"""Stage 2, streaming: the SSE events of a live generation or of a cached answer, and the
store of a stream the client stopped.

A stream the client stops (disconnects) still stores its exchange: the question and the text
the client was sent, with finish_reason "cancelled"; it is never cached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from parlance.gateway import convert, errors, moderation
from parlance.gateway.cache import CompletionRecord
from parlance.gateway.chat.background import Background
from parlance.gateway.chat.complete import Completion
from parlance.gateway.chat.generate import Generation, Responses
from parlance.gateway.chat.prepared import PreparedChat, Progress, Sent
from parlance.gateway.chat.render import DONE, ChunkWriter, delta_logprobs, sse

log = logging.getLogger(__name__)


class Streamer:
    def __init__(
        self, generation: Generation, completion: Completion, background: Background
    ) -> None:
        self.generation = generation
        self.completion = completion
        self.background = background

    async def stream(self, prepared: PreparedChat, stream: Responses) -> AsyncIterator[bytes]:
        """The SSE events of an OpenAI chat completion stream."""
        progress = Progress()
        sent = Sent()
        chunk = ChunkWriter(prepared)
        try:
            for index in range(prepared.n):
                yield chunk.role(index)
            async for event in self.generation.events(prepared, stream, progress):
                data = _event_chunk(chunk, event)
                if data is not None:
                    yield data
                    # Resumed: the chunk's send completed, so the client was sent it.
                    _mark_sent(sent, event)
        except errors.APIError as exc:
            # Headers are gone: the error travels as an SSE event, as OpenAI's API does.
            log.warning("stream failed: %s", exc.message)
            yield sse(json.dumps(exc.body(), separators=(",", ":")).encode())
            yield DONE
            return
        except (asyncio.CancelledError, GeneratorExit):
            # Stopped by the client: Starlette cancels this generator (or it is closed at a
            # yield), so nothing may be awaited here; the store runs in a task of its own.
            self.store_stopped(prepared, progress, sent)
            raise
        record = progress.record(prepared.model, prepared.n)
        # The answer is complete: a client leaving now must not lose its metrics, cache entry
        # or history write (nor write it twice), so they finish in a task the cancellation of
        # this stream does not reach.
        await self.background.shielded(self.completion.finish(prepared, progress, record))
        if prepared.include_usage:
            yield chunk.usage(record)
        yield DONE

    async def replay(
        self, prepared: PreparedChat, record: CompletionRecord
    ) -> AsyncIterator[bytes]:
        """A cached completion as a stream with the chunk shape of a live one."""
        chunk = ChunkWriter(prepared)
        sent = Sent()
        try:
            for choice in record.choices:
                yield chunk.role(choice.index)
            for choice in record.choices:
                for i, text in enumerate(choice.deltas):
                    yield chunk.content(choice.index, text, delta_logprobs(choice, i))
                    sent.text(choice.index, text)
                yield chunk.finish(choice.index, choice.finish_reason or "stop")
                sent.finish_reasons[choice.index] = choice.finish_reason or "stop"
        except (asyncio.CancelledError, GeneratorExit):
            self.store_stopped(prepared, Progress(prompt_tokens=record.prompt_tokens), sent)
            raise
        await self.background.shielded(self.completion.store_exchange(prepared, record))
        if prepared.include_usage:
            yield chunk.usage(record)
        yield DONE

    def store_stopped(self, prepared: PreparedChat, progress: Progress, sent: Sent) -> None:
        """Stores what a stopped stream sent, in the background (the stream's task is being
        cancelled)."""
        if prepared.conversation_id is None:
            return
        log.info(
            "chat completion stopped by the client",
            extra={
                "model": prepared.model,
                "key_id": prepared.principal.key_id,
                "completion_tokens": prepared.generated_tokens,
                "duration_ms": round((time.monotonic() - prepared.started) * 1000, 1),
            },
        )
        self.background.spawn(self._store_stopped(prepared, progress, sent))

    async def _store_stopped(self, prepared: PreparedChat, progress: Progress, sent: Sent) -> None:
        try:
            if progress.prompt_tokens is None and prepared.generation_started:
                try:
                    progress.prompt_tokens = await self.generation.count_prompt_tokens(prepared)
                except errors.APIError:
                    pass  # usage is not worth losing the exchange over
            # Never cached: the answer is incomplete.
            record = sent.record(prepared, progress)
            await self.completion.store_exchange(prepared, record, progress)
        except Exception:
            log.exception("storing a stopped exchange failed")


def _event_chunk(chunk: ChunkWriter, event: moderation.Event) -> bytes | None:
    """The SSE event of a moderated generation event (None: nothing to send)."""
    if isinstance(event, moderation.TextEvent):
        if event.text or event.logprobs:
            return chunk.content(event.index, event.text, convert.logprobs(event.logprobs))
        return None
    if isinstance(event, moderation.FinishEvent):
        return chunk.finish(event.index, event.reason)
    return None


def _mark_sent(sent: Sent, event: moderation.Event) -> None:
    if isinstance(event, moderation.TextEvent):
        sent.text(event.index, event.text)
    elif isinstance(event, moderation.FinishEvent):
        sent.finish_reasons[event.index] = event.reason
