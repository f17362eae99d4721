"""The chat completion request flow, stage by stage.

`ChatService` holds the stages and runs them in order for one admitted request: validation
(chat/validation.py), preparation (chat/prepare.py: context, cache key, input moderation), the
cache lookup, the generation (chat/generate.py, or chat/stream.py for SSE), and completion
(chat/complete.py: metrics, cache write, history write, title). Auth and limits are the
router's dependencies (chat/api_router.py, chat/limits.py); the request flow is described in
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.cache import CompletionRecord, ResponseCache
from parlance.gateway.chat import best_of, compare, validation
from parlance.gateway.chat.background import Background
from parlance.gateway.chat.complete import Completion
from parlance.gateway.chat.generate import Generation, Responses
from parlance.gateway.chat.intent import IntentStep
from parlance.gateway.chat.prepare import ModerationTask, Preparer
from parlance.gateway.chat.prepared import PreparedChat, Progress
from parlance.gateway.chat.protocol import ChatCompletion, ChatCompletionRequest
from parlance.gateway.chat.render import cached_logprobs, completion
from parlance.gateway.chat.stream import Streamer
from parlance.gateway.chat.timing import ServerTiming
from parlance.gateway.clients import GeneratorClient, HistoryClient, SafetyClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.headers import ResponseHeaders
from parlance.gateway.input_precheck import InputPrecheck, Precheck
from parlance.gateway.intents import IntentRouter, ReaskSignal
from parlance.gateway.models import ModelRegistry
from parlance.gateway.outbox import HistoryOutbox
from parlance.gateway.titles import TitleWriter

# What the flow answers: a complete body, or the events of a stream.
Answer = ChatCompletion | AsyncIterator[bytes]


class ChatService:
    def __init__(
        self,
        settings: GatewaySettings,
        generator: GeneratorClient,
        safety: SafetyClient,
        history: HistoryClient,
        outbox: HistoryOutbox,
        cache: ResponseCache,
        models: ModelRegistry,
        intents: IntentRouter | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.titles = TitleWriter(generator, safety, history, settings.generate_titles)
        # Stores of stopped streams, completions finishing after their client left, and the
        # settlement of request limits.
        self.background = Background()
        # Intent routing (chat/intent.py) when a route file is configured.
        step = None
        if intents is not None:
            step = IntentStep(intents, models, ReaskSignal(intents, history, self.background))
        self.preparer = Preparer(settings, generator, safety, history, outbox, models, step)
        self.generation = Generation(settings, generator, safety)
        # The input pre-check (input_precheck.py); start() takes its copy of the classifier.
        self.precheck = (
            InputPrecheck(safety) if settings.moderate_input and settings.input_precheck else None
        )
        self.completion = Completion(cache, outbox, self.titles)
        self.streamer = Streamer(self.generation, self.completion, self.background)
        # Side-by-side comparisons (chat/compare.py).
        self.comparer = compare.Comparer(settings)
        # best_of: k candidates, the reward model's best returned (chat/best_of.py).
        self.best_of = best_of.BestOf(
            settings,
            generator,
            models,
            self.preparer,
            self.generation,
            self.completion,
            self.streamer,
        )

    def start(self) -> None:
        """Starts what runs beside the requests: taking the input pre-check's copy."""
        if self.precheck is not None:
            self.precheck.start()

    def validate(self, request: ChatCompletionRequest, principal: Principal) -> None:
        validation.validate(request, principal, self.settings)
        compare.validate(request, self.settings)
        best_of.validate(request, self.settings)

    async def prepare(
        self,
        request: ChatCompletionRequest,
        principal: Principal,
        checking: ModerationTask | None = None,
    ) -> PreparedChat:
        """Builds the context (call validate() first), and makes it a comparison when it
        asked for one or the share draws it. `checking`: the input moderation admission
        started (Preparer.start_moderation)."""
        prepared = await self.preparer.prepare(request, principal, checking)
        self.comparer.apply(prepared)
        return prepared

    async def respond(
        self,
        prepared: PreparedChat,
        headers: ResponseHeaders,
        timing: ServerTiming,
        use_cache: bool = True,
    ) -> Answer:
        """The answer to a prepared request: from the cache when it has one, else generated
        (input moderation first). Adds the x-cache and Server-Timing headers."""
        if best_of.candidates(prepared.request) > 1:
            return await self.best_of.respond(prepared, headers, timing)
        if prepared.cache_key and use_cache:
            record = await self.cache.get(prepared.cache_key)
            timing.mark("cache")
            if record is not None:
                self.preparer.discard_moderation(prepared)
                headers["server-timing"] = timing.header()
                headers["x-cache"] = "hit"
                return await self.cached(prepared, record)
            headers["x-cache"] = "miss"
        else:
            headers["x-cache"] = "bypass"
        stream = await self.generate(prepared, timing)
        if prepared.request.stream:
            timing.mark("generator")  # until the generator's first message
            headers["server-timing"] = timing.header()
            return self.streamer.stream(prepared, stream)
        body = await self.complete(prepared, stream)
        timing.mark("generation")
        headers["server-timing"] = timing.header()
        return body

    async def generate(self, prepared: PreparedChat, timing: ServerTiming) -> Responses:
        """Input moderation, then the generation opened (its first message in). When the
        gateway's copy of safety's classifier passes the input (input_precheck.py), the
        generator is called beside safety's verdict instead of after it; the verdict is still
        awaited before this returns, and a refusal or a failure closes the generation."""
        check = self._precheck(prepared)
        if check is None or not check.passed:
            judged = await self.preparer.moderate_input(prepared)
            if check is not None and judged is not None and not judged.care:
                check.disagreed()  # the copy flagged what safety passed
            self.comparer.withdraw_offer(prepared)
            timing.mark("moderation")
            return await self.generation.open_stream(prepared)
        timing.mark("precheck")
        verdict = asyncio.ensure_future(self._verdict(prepared, check))
        # Retrieved even when the request is cancelled after the verdict failed (no warning).
        verdict.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            return await self.generation.open_stream(prepared, verdict)
        finally:
            verdict.cancel()  # the request was cancelled first; a finished verdict stays

    def _precheck(self, prepared: PreparedChat) -> Precheck | None:
        """The copy's judgement of the input, when it is worth having: None without a copy, or
        once safety's verdict is in already (input moderation started at admission)."""
        started = prepared.input_moderation
        if self.precheck is None or (started is not None and started.done()):
            return None
        texts = [text for _, text in prepared.new_messages]
        return self.precheck.check(texts, prepared.safety_thresholds)

    async def _verdict(self, prepared: PreparedChat, check: Precheck) -> bool:
        """Safety's verdict on an input the copy passed: False when it changes the request
        (answered with care: the care prompt joins the context, no comparison), so that the
        generation starts again; a refusal is raised."""
        try:
            judged = await self.preparer.moderate_input(prepared)
        except errors.APIError as exc:
            if exc.code == "content_filter":
                check.disagreed()
            raise
        if judged is not None and judged.care:
            check.disagreed()
            self.comparer.withdraw_offer(prepared)
            return False
        return True

    async def cached(self, prepared: PreparedChat, record: CompletionRecord) -> Answer:
        # A cached answer costs no generation: its tokens are not charged to TPM.
        prepared.mark_cached()
        if prepared.request.stream:
            return self.streamer.replay(prepared, record)
        await self.completion.store_exchange(prepared, record)
        return completion(prepared, record, cached_logprobs(record))

    async def complete(self, prepared: PreparedChat, stream: Responses) -> ChatCompletion:
        """Non-streaming: runs the whole generation of the opened `stream`, then finishes it
        (metrics, cache, history)."""
        progress = Progress()
        record, logprobs = await self.generation.run(prepared, progress, stream)
        await self.completion.finish(prepared, progress, record)
        return completion(prepared, record, logprobs)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Lets background stores reach the outbox (which flushes on its own close)."""
        await self.background.close(timeout_s)
        await self.titles.close()
        if self.precheck is not None:
            await self.precheck.close()
