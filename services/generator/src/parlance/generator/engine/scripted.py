"""ScriptedEngine: a test engine that streams a scripted reply instead of running a model.

It exists for tests of the gateway (streamed output moderation, cancellation, caching) and for
load benchmarks of everything around the model, where a real model's cost and randomness get in
the way. It is never the default: GENERATOR_ENGINE=scripted selects it.

Its "tokens" are words with their leading whitespace; it counts them exactly, honours
max_tokens, stop strings, n, ignore_eos and cancellation, and paces tokens at `tokens_per_s`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Sequence

from parlance.common.errors import AlreadyExists, ContextLengthExceeded
from parlance.generator.engine.base import (
    ChatMessage,
    ChoiceDelta,
    Engine,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationStep,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
    TopLogprob,
    Usage,
    check_sampling_common,
)
from parlance.generator.engine.stops import StopStringFilter

ENGINE_NAME = "scripted"
_WORD = re.compile(r"\s*\S+")


def split_tokens(text: str) -> list[str]:
    """The scripted engine's tokenizer: words with their leading whitespace."""
    return _WORD.findall(text)


def render_chat(messages: Sequence[ChatMessage]) -> str:
    """The scripted engine's chat template, so that CountTokens and usage agree."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


class ScriptedEngine(Engine):
    """Replies with `text` when given, else echoes the last user message (or the prompt)."""

    name = ENGINE_NAME

    def __init__(
        self,
        *,
        served_model_name: str,
        text: str | None = None,
        tokens_per_s: float = 20.0,
        max_model_len: int = 2048,
    ) -> None:
        if text is not None and not split_tokens(text):
            raise ValueError("the scripted text has no tokens")
        self._served_model_name = served_model_name
        self._text = text
        self._delay_s = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self._max_model_len = max_model_len
        self._aborts: dict[str, asyncio.Event] = {}
        self._created = 0
        self._started = False

    async def start(self) -> None:
        self._created = int(time.time())
        self._started = True

    async def close(self) -> None:
        for event in self._aborts.values():
            event.set()
        self._started = False

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id=self._served_model_name,
            created=self._created,
            max_model_len=self._max_model_len,
            engine=ENGINE_NAME,
        )

    def stats(self) -> EngineStats:
        # No queue: every request runs at once (the point is to load what surrounds the model).
        return EngineStats(running=len(self._aborts), waiting=0)

    async def count_tokens(
        self, *, messages: Sequence[ChatMessage] | None = None, prompt: str | None = None
    ) -> int:
        return len(split_tokens(render_chat(messages) if messages is not None else prompt or ""))

    async def abort(self, request_id: str) -> None:
        event = self._aborts.get(request_id)
        if event is not None:
            event.set()

    def reply_for(self, request: GenerationRequest) -> list[str]:
        if self._text is not None:
            return split_tokens(self._text)
        if request.messages is not None:
            users = [m.content for m in request.messages if m.role == "user"]
            source = users[-1] if users else ""
        else:
            source = request.prompt or ""
        # An empty echo still answers something, so every request yields tokens.
        return split_tokens(source) or ["…"]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationStep, None]:
        options = request.sampling
        check_sampling_common(options)
        prompt_tokens = await self.count_tokens(messages=request.messages, prompt=request.prompt)
        budget = self._max_model_len - prompt_tokens
        if budget < 1:
            raise ContextLengthExceeded("the prompt fills the context window", param="messages")
        if request.request_id in self._aborts:
            raise AlreadyExists("a request with this id is in flight", param="request_id")
        max_tokens = min(options.max_tokens or budget, budget)
        reply = self.reply_for(request)
        aborted = asyncio.Event()
        self._aborts[request.request_id] = aborted
        try:
            total = 0
            for index in range(options.n):
                count = 0
                async for step in self._choice(index, reply, options, max_tokens, aborted):
                    count += sum(d.token_count for d in step.choices)
                    yield step
                total += count
            yield GenerationStep(usage=Usage(prompt_tokens, total))
        finally:
            del self._aborts[request.request_id]

    async def _choice(
        self,
        index: int,
        reply: list[str],
        options: SamplingOptions,
        max_tokens: int,
        aborted: asyncio.Event,
    ) -> AsyncGenerator[GenerationStep, None]:
        stops = StopStringFilter(options.stop)
        count = 0
        while True:
            if aborted.is_set():
                yield GenerationStep([ChoiceDelta(index, finish_reason=FinishReason.ABORT)])
                return
            # Pacing; sleep(0) still lets other requests and cancellation in between tokens.
            await asyncio.sleep(self._delay_s)
            # ignore_eos keeps going by repeating the script, for fixed-length benchmarks.
            token = reply[count % len(reply)]
            if count >= len(reply) and not token[:1].isspace():
                token = " " + token
            count += 1
            text, stopped = stops.feed(token)
            finish: FinishReason | None = None
            if stopped:
                finish = FinishReason.STOP
            elif count >= max_tokens:
                finish = FinishReason.LENGTH
            elif count >= len(reply) and not options.ignore_eos:
                finish = FinishReason.STOP
            if finish is not None and not stopped:
                text += stops.flush()
            logprobs = []
            if options.logprobs:
                top = (TopLogprob(token, 0.0, token.encode()),) if options.top_logprobs else ()
                # A scripted token is certain: probability 1.
                logprobs.append(TokenLogprob(token, 0.0, token.encode(), top))
            yield GenerationStep([ChoiceDelta(index, text, 1, finish, logprobs)])
            if finish is not None:
                return
