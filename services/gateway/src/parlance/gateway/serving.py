"""The chat completion request flow (ARCHITECTURE.md, "The request flow").

`ChatService.prepare` validates, moderates the input and builds the context (loading the
stored conversation when asked); `complete` and `stream` run the generation and produce the
OpenAI response or its SSE stream; both finish by storing the exchange and caching the answer.
A stream the client stops (disconnects) still stores its exchange: the question and the text
the client was sent, with finish_reason "cancelled"; it is never cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from parlance.common.request_id import get_request_id, new_request_id
from parlance.gateway import convert, errors, moderation
from parlance.gateway.auth import Principal
from parlance.gateway.cache import CachedChoice, CompletionRecord, ResponseCache, cache_key
from parlance.gateway.clients import GeneratorClient, HistoryClient, SafetyClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.context import ContextParts, fit_context, prompt_budget
from parlance.gateway.metrics import CONTEXT_TRIMMED, TOKENS, TPOT, TTFT
from parlance.gateway.models import ModelRegistry
from parlance.gateway.outbox import HistoryOutbox
from parlance.gateway.protocol import ChatCompletionRequest
from parlance.gateway.rendering import ChunkWriter, render_completion, sse
from parlance.gateway.titles import TitleWriter, provisional_title
from parlance.generator.v1 import generator_pb2
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)

_UNSUPPORTED = {
    "tools": "Tool calling is not supported by this server.",
    "tool_choice": "Tool calling is not supported by this server.",
    "logit_bias": "logit_bias is not supported by this server.",
}


@dataclass
class PreparedChat:
    request: ChatCompletionRequest
    principal: Principal
    model: str
    context: list[generator_pb2.ChatMessage]
    # Messages of this request, to be stored before the answer.
    new_messages: list[tuple[str, str]]
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)
    conversation_id: str | None = None
    # Set: the stored messages go below this message (a new branch); "" is a new root.
    parent_message_id: str | None = None
    create_conversation: bool = False
    cache_key: str | None = None
    # Token accounting for TPM reconciliation, filled in as the generation goes.
    generation_started: bool = False
    cached: bool = False
    prompt_tokens: int | None = None
    generated_tokens: int = 0

    @property
    def n(self) -> int:
        return self.request.n or 1

    def mark_cached(self) -> None:
        self.cached = True

    def tokens_used(self) -> int | None:
        """Tokens this request really cost (None: nothing was generated, refund it all).
        A stream cut by the client has no usage from the engine: its prompt is estimated
        and every token the engine produced until the cut is counted."""
        if self.cached:
            return 0
        if not self.generation_started:
            return None
        prompt = self.prompt_tokens
        if prompt is None:
            prompt = max(1, sum(len(m.content) for m in self.context) // 4)
        return prompt + self.generated_tokens


@dataclass
class _Progress:
    """What a generation released so far (for usage, caching, history and metrics)."""

    choices: dict[int, CachedChoice] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens_after_first: int = 0

    def add_text(self, event: moderation.TextEvent, now: float) -> None:
        choice = self.choices.setdefault(event.index, CachedChoice(index=event.index))
        if event.text:
            choice.deltas.append(event.text)
        if event.token_count:
            if self.first_token_at is None:
                self.first_token_at = now
                self.tokens_after_first += event.token_count - 1
            else:
                self.tokens_after_first += event.token_count
            self.last_token_at = now

    def finish(self, event: moderation.FinishEvent) -> None:
        self.choices.setdefault(
            event.index, CachedChoice(index=event.index)
        ).finish_reason = event.reason

    def record(self, model: str, n: int) -> CompletionRecord:
        return CompletionRecord(
            model=model,
            choices=[self.choices.get(i, CachedChoice(index=i)) for i in range(n)],
            prompt_tokens=self.prompt_tokens or 0,
            completion_tokens=self.completion_tokens or 0,
        )


# finish_reason of a stored answer whose stream the client stopped.
CANCELLED = "cancelled"


@dataclass
class _Sent:
    """What a stream has handed to the client: per choice, the text of the chunks whose send
    completed (always released text: held-back text is never in a chunk), and the finish
    reasons sent. A stopped stream stores exactly this."""

    deltas: dict[int, list[str]] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)

    def text(self, index: int, text: str) -> None:
        if text:
            self.deltas.setdefault(index, []).append(text)

    def record(self, prepared: PreparedChat, progress: _Progress) -> CompletionRecord:
        return CompletionRecord(
            model=prepared.model,
            choices=[
                CachedChoice(
                    index=i,
                    deltas=list(self.deltas.get(i, [])),
                    finish_reason=self.finish_reasons.get(i, CANCELLED),
                )
                for i in range(prepared.n)
            ],
            prompt_tokens=progress.prompt_tokens or 0,
            # Every token the engine produced until the cut (held-back ones included): what
            # the answer cost, as TPM counts it.
            completion_tokens=prepared.generated_tokens,
        )


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
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.safety = safety
        self.history = history
        self.outbox = outbox
        self.cache = cache
        self.models = models
        self.titles = TitleWriter(generator, safety, history, settings.generate_titles)
        # Stores of stopped streams and completions finishing after their client left: the
        # event loop keeps only weak references to tasks.
        self._background: set[asyncio.Task[None]] = set()

    # --- 1. validation, moderation, context -------------------------------------------------

    def validate(self, request: ChatCompletionRequest, principal: Principal) -> None:
        s = self.settings
        max_tokens_limit = principal.limits.max_tokens or s.max_tokens_limit
        for name, message in _UNSUPPORTED.items():
            if getattr(request, name):
                raise errors.invalid_request(message, param=name)
        if request.response_format and request.response_format.type != "text":
            raise errors.invalid_request(
                "Only response_format type 'text' is supported.", param="response_format.type"
            )
        # An empty list is only a regenerate: answer again below parent_message_id.
        regenerate = request.conversation_id is not None and request.parent_message_id is not None
        if not request.messages and not regenerate:
            raise errors.invalid_request(
                "messages must contain at least one message.", param="messages"
            )
        if len(request.messages) > s.max_messages:
            raise errors.invalid_request(
                f"Too many messages: at most {s.max_messages}.", param="messages"
            )
        total = 0
        for i, message in enumerate(request.messages):
            if message.role in ("tool", "function"):
                raise errors.invalid_request(
                    f"Role '{message.role}' is not supported (no tool calling).",
                    param=f"messages.{i}.role",
                )
            if isinstance(message.content, list):
                for part in message.content:
                    if part.type != "text":
                        raise errors.invalid_request(
                            f"Content part type '{part.type}' is not supported; send text.",
                            param=f"messages.{i}.content",
                        )
            total += len(message.text())
        if total > s.max_input_chars:
            raise errors.invalid_request(
                f"The messages total {total} characters; the limit is {s.max_input_chars}.",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = request.requested_max_tokens()
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise errors.invalid_request(
                f"max_tokens is too large: {max_tokens}. This key allows at most "
                f"{max_tokens_limit}.",
                param="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
            )
        if (request.n or 1) > s.max_n:
            raise errors.invalid_request(f"n must be at most {s.max_n}.", param="n")
        if request.top_logprobs and not request.logprobs:
            raise errors.invalid_request(
                "top_logprobs requires logprobs to be true.", param="top_logprobs"
            )
        if request.stream_options is not None and not request.stream:
            raise errors.invalid_request(
                "stream_options is only allowed when stream is true.", param="stream_options"
            )

    async def prepare(self, request: ChatCompletionRequest, principal: Principal) -> PreparedChat:
        """Builds the context (call validate() first)."""
        model = await self.models.resolve(request.model)
        new_messages = [(m.role, m.text()) for m in request.messages]
        context: list[generator_pb2.ChatMessage] = []
        stored_context: list[generator_pb2.ChatMessage] = []
        prepared = PreparedChat(
            request=request,
            principal=principal,
            model=model,
            context=context,
            new_messages=new_messages,
        )
        if request.parent_message_id is not None and not request.conversation_id:
            raise errors.invalid_request(
                "parent_message_id needs conversation_id.", param="parent_message_id"
            )
        if (request.conversation_id or request.store) and self.outbox.full:
            # History has been down long enough to fill the outbox. Refuse before generating:
            # an answer that could not be kept would break "nothing is lost".
            raise errors.service_unavailable(
                f"History is unavailable and {self.outbox.depth} exchanges are waiting to be"
                " stored; retry later, or send the request without store/conversation_id.",
                self.settings.retry_after_s,
            )
        if request.conversation_id:
            prepared.conversation_id = request.conversation_id
            prepared.parent_message_id = request.parent_message_id
            if request.parent_message_id != "":  # "" branches from a new root: no context
                query = history_pb2.GetConversationRequest(
                    user_id=principal.user_id, conversation_id=request.conversation_id
                )
                if request.parent_message_id:
                    query.message_id = request.parent_message_id
                stored = await self.history.get_conversation(query)
                stored_context = [convert.chat_message(m.role, m.content) for m in stored.messages]
        elif request.store:
            prepared.conversation_id = f"conv_{uuid.uuid4().hex}"
            prepared.create_conversation = True
        new_context = [convert.chat_message(role, text) for role, text in new_messages]
        if stored_context:
            context.extend(await self._fit_context(prepared, stored_context, new_context))
        else:
            context.extend(new_context)
        if self.settings.cache_enabled and request.is_deterministic():
            prepared.cache_key = cache_key(
                principal.user_id, convert.cache_material(request, model, context)
            )
        return prepared

    async def _fit_context(
        self,
        prepared: PreparedChat,
        stored: list[generator_pb2.ChatMessage],
        new: list[generator_pb2.ChatMessage],
    ) -> list[generator_pb2.ChatMessage]:
        """The stored conversation trimmed, oldest messages first, so that it and the request's
        messages fit the model's window with room for the answer. Messages the request sends
        itself are never dropped: when they alone do not fit, the generator says so (400)."""
        window = next(
            (m.max_model_len for m in await self.models.list() if m.id == prepared.model), 0
        )
        parts = ContextParts.split(stored, new)
        if not window:  # the engine did not say: send everything, the generator decides
            return parts.assemble(0)
        budget = prompt_budget(
            window,
            prepared.request.requested_max_tokens(),
            self.settings.context_completion_reserve,
        )

        async def count(messages: list[generator_pb2.ChatMessage]) -> int:
            reply = await self.generator.count_tokens(
                generator_pb2.CountTokensRequest(
                    model=prepared.model, chat=generator_pb2.ChatInput(messages=messages)
                )
            )
            return int(reply.token_count)

        fitted = await fit_context(parts, budget, count)
        if fitted.dropped:
            CONTEXT_TRIMMED.labels(prepared.model).inc(fitted.dropped)
            log.info(
                "context trimmed to fit the model's window",
                extra={
                    "conversation_id": prepared.conversation_id,
                    "dropped_messages": fitted.dropped,
                    "kept_messages": len(fitted.messages),
                    "prompt_tokens": fitted.prompt_tokens,
                    "budget": budget,
                    "count_calls": fitted.count_calls,
                },
            )
        return fitted.messages

    async def moderate_input(self, prepared: PreparedChat) -> None:
        """Refuses the request when any message of it is flagged (fail closed: safety down is
        a 503, never an unmoderated generation). Messages loaded from history passed
        moderation when they were stored."""
        if self.settings.moderate_input:
            await moderation.moderate_input(
                self.safety, [text for _, text in prepared.new_messages]
            )

    # --- 2. generation ----------------------------------------------------------------------

    def _generate_request(self, prepared: PreparedChat) -> generator_pb2.GenerateRequest:
        return generator_pb2.GenerateRequest(
            request_id=get_request_id() or new_request_id(),
            model=prepared.model,
            chat=generator_pb2.ChatInput(messages=prepared.context),
            sampling=convert.sampling_params(prepared.request),
        )

    async def open_stream(
        self, prepared: PreparedChat
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Starts generating and waits for the first message, so that a generator that is down
        or refuses the request answers with an HTTP error before any byte is sent."""
        stream = self.generator.generate(self._generate_request(prepared))
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise errors.service_unavailable(
                "The generator ended the stream early.", self.settings.retry_after_s
            ) from None

        async def chained() -> AsyncIterator[generator_pb2.GenerateResponse]:
            try:
                yield first
                async for item in stream:
                    yield item
            finally:
                await stream.aclose()

        return chained()

    async def _events(
        self,
        prepared: PreparedChat,
        stream: AsyncIterator[generator_pb2.GenerateResponse],
        progress: _Progress,
    ) -> AsyncIterator[moderation.Event]:
        """The generation after output moderation, recorded into `progress` as it goes."""
        moderator = moderation.StreamModerator(self.safety, self.settings, prepared.n)
        prepared.generation_started = True
        async for event in moderator.events(stream):
            prepared.generated_tokens = moderator.generated_tokens
            if isinstance(event, moderation.TextEvent):
                progress.add_text(event, time.monotonic())
            elif isinstance(event, moderation.FinishEvent):
                progress.finish(event)
            else:
                progress.prompt_tokens = prepared.prompt_tokens = event.prompt_tokens
                progress.completion_tokens = event.completion_tokens
            yield event
        prepared.generated_tokens = moderator.generated_tokens
        if progress.completion_tokens is None:
            # Cut short by moderation: the engine's own usage never came. Count what it
            # generated (held-back tokens included) and the prompt, so usage stays exact.
            progress.completion_tokens = moderator.generated_tokens
            progress.prompt_tokens = prepared.prompt_tokens = await self._count_prompt_tokens(
                prepared
            )

    async def _count_prompt_tokens(self, prepared: PreparedChat) -> int:
        reply = await self.generator.count_tokens(
            generator_pb2.CountTokensRequest(
                model=prepared.model, chat=generator_pb2.ChatInput(messages=prepared.context)
            )
        )
        return int(reply.token_count)

    async def complete(self, prepared: PreparedChat) -> dict[str, Any]:
        """Non-streaming: runs the whole generation and returns the OpenAI body. A moderated
        answer keeps the text released before the flagged window."""
        progress = _Progress()
        logprobs: dict[int, list[Any]] = {}
        stream = await self.open_stream(prepared)
        async for event in self._events(prepared, stream, progress):
            if isinstance(event, moderation.TextEvent) and event.logprobs:
                logprobs.setdefault(event.index, []).extend(event.logprobs)
        record = progress.record(prepared.model, prepared.n)
        await self.finish(prepared, progress, record)
        body = render_completion(prepared, record)
        for choice in body["choices"]:
            choice["logprobs"] = convert.logprobs_json(logprobs.get(choice["index"]))
        return body

    async def stream(
        self, prepared: PreparedChat, stream: AsyncIterator[generator_pb2.GenerateResponse]
    ) -> AsyncIterator[bytes]:
        """Streaming: the SSE events of an OpenAI chat completion stream."""
        progress = _Progress()
        sent = _Sent()
        include_usage = bool(
            prepared.request.stream_options and prepared.request.stream_options.include_usage
        )
        chunk = ChunkWriter(prepared, include_usage)
        try:
            for index in range(prepared.n):
                yield chunk.role(index)
            async for event in self._events(prepared, stream, progress):
                if isinstance(event, moderation.TextEvent):
                    if event.text or event.logprobs:
                        yield chunk.content(
                            event.index, event.text, convert.logprobs_json(event.logprobs)
                        )
                        # Resumed: the chunk's send completed, so the client was sent it.
                        sent.text(event.index, event.text)
                elif isinstance(event, moderation.FinishEvent):
                    yield chunk.finish(event.index, event.reason)
                    sent.finish_reasons[event.index] = event.reason
        except errors.APIError as exc:
            # Headers are gone: the error travels as an SSE event, as OpenAI's API does.
            log.warning("stream failed: %s", exc.message)
            yield sse(exc.body())
            yield b"data: [DONE]\n\n"
            return
        except (asyncio.CancelledError, GeneratorExit):
            # Stopped by the client: Starlette cancels this generator (or it is closed at a
            # yield), so nothing may be awaited here; the store runs in a task of its own.
            self._store_stopped(prepared, progress, sent)
            raise
        record = progress.record(prepared.model, prepared.n)
        # The answer is complete: a client leaving now must not lose its metrics, cache entry
        # or history write (nor write it twice), so they finish in a task the cancellation of
        # this stream does not reach.
        await self._shielded(self.finish(prepared, progress, record))
        if include_usage:
            yield chunk.usage(record)
        yield b"data: [DONE]\n\n"

    def _store_stopped(self, prepared: PreparedChat, progress: _Progress, sent: _Sent) -> None:
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
        self._spawn(self._store_stopped_now(prepared, progress, sent))

    async def _store_stopped_now(
        self, prepared: PreparedChat, progress: _Progress, sent: _Sent
    ) -> None:
        try:
            if progress.prompt_tokens is None and prepared.generation_started:
                try:
                    progress.prompt_tokens = await self._count_prompt_tokens(prepared)
                except errors.APIError:
                    pass  # usage is not worth losing the exchange over
            # Never cached: the answer is incomplete.
            await self.store_exchange(prepared, sent.record(prepared, progress), progress)
        except Exception:
            log.exception("storing a stopped exchange failed")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        await asyncio.shield(self._spawn(work))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Lets background stores reach the outbox (which flushes on its own close)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)
        await self.titles.close()

    async def replay(
        self, prepared: PreparedChat, record: CompletionRecord
    ) -> AsyncIterator[bytes]:
        """A cached completion as a stream with the chunk shape of a live one."""
        include_usage = bool(
            prepared.request.stream_options and prepared.request.stream_options.include_usage
        )
        chunk = ChunkWriter(prepared, include_usage)
        sent = _Sent()
        try:
            for choice in record.choices:
                yield chunk.role(choice.index)
            for choice in record.choices:
                for text in choice.deltas:
                    yield chunk.content(choice.index, text, None)
                    sent.text(choice.index, text)
                yield chunk.finish(choice.index, choice.finish_reason or "stop")
                sent.finish_reasons[choice.index] = choice.finish_reason or "stop"
        except (asyncio.CancelledError, GeneratorExit):
            progress = _Progress(prompt_tokens=record.prompt_tokens)
            self._store_stopped(prepared, progress, sent)
            raise
        await self._shielded(self.store_exchange(prepared, record))
        if include_usage:
            yield chunk.usage(record)
        yield b"data: [DONE]\n\n"

    # --- 3. completion: metrics, cache, history -----------------------------------------------

    async def finish(
        self, prepared: PreparedChat, progress: _Progress, record: CompletionRecord
    ) -> None:
        model = prepared.model
        key_id = prepared.principal.key_id
        TOKENS.labels("prompt", model, key_id).inc(record.prompt_tokens)
        TOKENS.labels("completion", model, key_id).inc(record.completion_tokens)
        # One line per completed request: ids, sizes and timings, never the text.
        log.info(
            "chat completion",
            extra={
                "model": model,
                "key_id": key_id,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "finish_reasons": [c.finish_reason for c in record.choices],
                "duration_ms": round((time.monotonic() - prepared.started) * 1000, 1),
            },
        )
        if progress.first_token_at is not None:
            TTFT.labels(model).observe(progress.first_token_at - prepared.started)
            if progress.tokens_after_first > 0 and progress.last_token_at is not None:
                TPOT.labels(model).observe(
                    (progress.last_token_at - progress.first_token_at) / progress.tokens_after_first
                )
        complete = all(c.finish_reason in ("stop", "length") for c in record.choices)
        if prepared.cache_key and complete:
            await self.cache.put(prepared.cache_key, record)
        await self.store_exchange(prepared, record, progress)

    async def store_exchange(
        self, prepared: PreparedChat, record: CompletionRecord, progress: _Progress | None = None
    ) -> None:
        if prepared.conversation_id is None:
            return
        messages = [
            history_pb2.Message(id=f"msg_{uuid.uuid4().hex}", role=role, content=text)
            for role, text in prepared.new_messages
        ]
        answer = record.choices[0]
        assistant = history_pb2.Message(
            id=f"msg_{uuid.uuid4().hex}",
            role="assistant",
            content=answer.text,
            model=record.model,
            usage=history_pb2.Usage(
                prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens
            ),
            finish_reason=answer.finish_reason or "",
        )
        if progress is not None and progress.first_token_at is not None:
            assistant.time_to_first_token_ms = int(
                (progress.first_token_at - prepared.started) * 1000
            )
            assistant.total_time_ms = int((time.monotonic() - prepared.started) * 1000)
        messages.append(assistant)
        if prepared.parent_message_id is not None:
            # Only the first message names its parent; the others chain below it.
            messages[0].parent_id = prepared.parent_message_id
        first_user = next((text for role, text in prepared.new_messages if role == "user"), "")
        written = await self.outbox.submit(
            history_pb2.AppendMessagesRequest(
                user_id=prepared.principal.user_id,
                conversation_id=prepared.conversation_id,
                messages=messages,
                create_if_missing=prepared.create_conversation,
                title=provisional_title(first_user),
            )
        )
        # The first exchange of a new conversation gets the model's title, in the background.
        # An exchange left in the outbox (history down) keeps its provisional title: the
        # conversation the title would go to does not exist yet.
        if written and prepared.create_conversation:
            self.titles.schedule(
                prepared.principal.user_id,
                prepared.conversation_id,
                prepared.model,
                first_user,
                answer.text,
            )
