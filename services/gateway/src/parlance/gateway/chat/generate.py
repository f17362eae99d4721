"""Stage 2 of a chat completion: the generation, through output moderation, recorded as it
goes (the streaming side is in chat/stream.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from parlance.gateway import convert, errors, moderation
from parlance.gateway.cache import CompletionRecord
from parlance.gateway.chat.prepare import count_tokens
from parlance.gateway.chat.prepared import PreparedChat, Progress
from parlance.gateway.chat.protocol import ChoiceLogprobs
from parlance.gateway.clients import GeneratorClient, SafetyClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.stream_moderation import StreamModerator
from parlance.generator.v1 import generator_pb2

Responses = AsyncIterator[generator_pb2.GenerateResponse]


async def aclose(stream: Responses) -> None:
    """Closes a generation (cancels its gRPC call): the client's generate() is an async
    generator, typed as the AsyncIterator it is used as."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


async def _first(stream: Responses) -> generator_pb2.GenerateResponse | None:
    """The stream's first message (None when it ends before one)."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


async def _stop(first_message: asyncio.Future[Any], stream: Responses) -> None:
    """Stops a generation whose first message may still be awaited: the wait is cancelled
    before the stream is closed (an async generator cannot be closed while it runs)."""
    first_message.cancel()
    await asyncio.gather(first_message, return_exceptions=True)
    await aclose(stream)


def _chained(first: generator_pb2.GenerateResponse, stream: Responses) -> Responses:
    """The first message, then the rest of the stream; closing it closes the stream."""

    async def chained() -> Responses:
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await aclose(stream)

    return chained()


class Generation:
    def __init__(
        self, settings: GatewaySettings, generator: GeneratorClient, safety: SafetyClient
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.safety = safety

    def generate_request(
        self, prepared: PreparedChat, attempt: int = 0
    ) -> generator_pb2.GenerateRequest:
        return generator_pb2.GenerateRequest(
            # The engine's request id is the gateway's own (the completion id the client is
            # given), never the client's X-Request-ID: two clients may send the same one, and
            # the engine refuses a request id already in flight. The client's id still travels
            # in the call's metadata, for the logs. A generation started again (`attempt` > 0)
            # gets an id of its own: the engine may still be aborting the first one.
            request_id=f"{prepared.completion_id}-{attempt}" if attempt else prepared.completion_id,
            model=prepared.model,
            chat=generator_pb2.ChatInput(messages=prepared.context),
            sampling=convert.sampling_params(prepared.request, prepared.max_tokens),
        )

    async def open_stream(
        self, prepared: PreparedChat, verdict: asyncio.Future[bool] | None = None
    ) -> Responses:
        """Starts generating and waits for the first message, so that a generator that is down
        or refuses the request answers with an HTTP error before any byte is sent.

        `verdict`: input moderation still under way (the input pre-check passed the input,
        input_precheck.py), awaited beside the first message and before this returns. Its
        refusal or failure closes the generation at once (without waiting for a first message)
        and is raised; it comes before the generator's own error when both fail, as when
        moderation ran first. A verdict of False (the request changed: answered with care)
        closes the generation and starts it again as the request now is."""
        if verdict is None:
            return await self._open(prepared, 0)
        stream = self.generator.generate(self.generate_request(prepared))
        first_message = asyncio.ensure_future(_first(stream))
        try:
            await asyncio.wait((first_message, verdict), return_when=asyncio.FIRST_COMPLETED)
            if verdict.done() and (verdict.cancelled() or verdict.exception() is not None):
                await verdict  # refused or failed: raised, the generation closed below
            try:
                first = await first_message
            except Exception:
                await verdict  # its refusal or failure comes first
                raise
            keep = await verdict
        except BaseException:
            await _stop(first_message, stream)
            raise
        if first is None:
            await aclose(stream)
            raise self._ended_early()
        if not keep:
            await aclose(stream)
            return await self._open(prepared, 1)
        return _chained(first, stream)

    async def _open(self, prepared: PreparedChat, attempt: int) -> Responses:
        stream = self.generator.generate(self.generate_request(prepared, attempt))
        try:
            first = await _first(stream)
        except BaseException:
            await aclose(stream)
            raise
        if first is None:
            await aclose(stream)
            raise self._ended_early()
        return _chained(first, stream)

    def _ended_early(self) -> errors.APIError:
        return errors.service_unavailable(
            "The generator ended the stream early.", self.settings.retry_after_s
        )

    async def events(
        self, prepared: PreparedChat, stream: Responses, progress: Progress
    ) -> AsyncIterator[moderation.Event]:
        """The generation after output moderation, recorded into `progress` as it goes."""
        moderator = StreamModerator(self.safety, self.settings, prepared.n)
        prepared.generation_started = True
        async for event in moderator.events(stream):
            prepared.generated_tokens = moderator.generated_tokens
            if isinstance(event, moderation.TextEvent):
                progress.add_text(event, time.monotonic())
                progress.verdicts[event.index] = moderator.verdict_json(event.index)
            elif isinstance(event, moderation.FinishEvent):
                progress.finish(event)
                progress.verdicts[event.index] = moderator.verdict_json(event.index)
            else:
                progress.prompt_tokens = prepared.prompt_tokens = event.prompt_tokens
                progress.completion_tokens = event.completion_tokens
            yield event
        prepared.generated_tokens = moderator.generated_tokens
        if progress.completion_tokens is None:
            # Cut short by moderation: the engine's own usage never came. Count what it
            # generated (held-back tokens included) and the prompt, so usage stays exact.
            progress.completion_tokens = moderator.generated_tokens
            progress.prompt_tokens = prepared.prompt_tokens = await self.count_prompt_tokens(
                prepared
            )

    async def count_prompt_tokens(self, prepared: PreparedChat) -> int:
        return await count_tokens(self.generator, prepared.model, prepared.context)

    async def run(
        self, prepared: PreparedChat, progress: Progress, stream: Responses | None = None
    ) -> tuple[CompletionRecord, dict[int, ChoiceLogprobs | None]]:
        """Non-streaming: the whole generation (of `stream` when it is open already), and each
        choice's logprobs. A moderated answer keeps the text released before the flagged
        window."""
        tokens: dict[int, list[generator_pb2.TokenLogprob]] = {}
        if stream is None:
            stream = await self.open_stream(prepared)
        async for event in self.events(prepared, stream, progress):
            if isinstance(event, moderation.TextEvent) and event.logprobs:
                tokens.setdefault(event.index, []).extend(event.logprobs)
        logprobs = {index: convert.logprobs(items) for index, items in tokens.items()}
        return progress.record(prepared.model, prepared.n), logprobs
