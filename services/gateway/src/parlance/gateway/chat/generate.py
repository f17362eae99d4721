"""Stage 2 of a chat completion: the generation, through output moderation, recorded as it
goes (the streaming side is in chat/stream.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

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


class Generation:
    def __init__(
        self, settings: GatewaySettings, generator: GeneratorClient, safety: SafetyClient
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.safety = safety

    def generate_request(self, prepared: PreparedChat) -> generator_pb2.GenerateRequest:
        return generator_pb2.GenerateRequest(
            # The engine's request id is the gateway's own (the completion id the client is
            # given), never the client's X-Request-ID: two clients may send the same one, and
            # the engine refuses a request id already in flight. The client's id still travels
            # in the call's metadata, for the logs.
            request_id=prepared.completion_id,
            model=prepared.model,
            chat=generator_pb2.ChatInput(messages=prepared.context),
            sampling=convert.sampling_params(prepared.request, prepared.max_tokens),
        )

    async def open_stream(
        self, prepared: PreparedChat, verdict: Awaitable[object] | None = None
    ) -> Responses:
        """Starts generating and waits for the first message, so that a generator that is down
        or refuses the request answers with an HTTP error before any byte is sent.

        `verdict`: input moderation still under way (the input pre-check passed it early,
        input_precheck.py), awaited before this returns: a refusal or a safety failure closes
        the generation and is raised, and comes before the generator's own error when both
        fail, as when moderation ran first."""
        stream = self.generator.generate(self.generate_request(prepared))
        try:
            first = await anext(stream)
        except BaseException as exc:
            await aclose(stream)
            if verdict is not None and not isinstance(exc, asyncio.CancelledError):
                await verdict
            if isinstance(exc, StopAsyncIteration):
                raise errors.service_unavailable(
                    "The generator ended the stream early.", self.settings.retry_after_s
                ) from None
            raise
        if verdict is not None:
            try:
                await verdict
            except BaseException:
                await aclose(stream)
                raise

        async def chained() -> Responses:
            try:
                yield first
                async for item in stream:
                    yield item
            finally:
                await aclose(stream)

        return chained()

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
