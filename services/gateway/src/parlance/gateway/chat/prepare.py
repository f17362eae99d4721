"""Stage 1 of a chat completion: the context (the stored conversation fitted to the model's
window, then the request's messages), the cache key, and input moderation."""

from __future__ import annotations

import asyncio
import logging
import uuid

from parlance.gateway import convert, errors, moderation
from parlance.gateway.auth import Principal
from parlance.gateway.cache import cache_key
from parlance.gateway.chat.intent import IntentStep
from parlance.gateway.chat.prepared import ContextInputs, PreparedChat
from parlance.gateway.chat.protocol import ChatCompletionRequest
from parlance.gateway.chat.validation import effective_max_tokens
from parlance.gateway.clients import GeneratorClient, HistoryClient, SafetyClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.context import ContextParts, fit_context, prompt_budget
from parlance.gateway.intents import previous_turn
from parlance.gateway.metrics import CONTEXT_TRIMMED
from parlance.gateway.models import ModelRegistry
from parlance.gateway.outbox import HistoryOutbox
from parlance.generator.v1 import generator_pb2
from parlance.history.v1 import history_pb2
from parlance.safety.v1 import safety_pb2

log = logging.getLogger(__name__)

Messages = list[generator_pb2.ChatMessage]
ModerationTask = asyncio.Task[safety_pb2.ClassifyResponse | None]


class Preparer:
    def __init__(
        self,
        settings: GatewaySettings,
        generator: GeneratorClient,
        safety: SafetyClient,
        history: HistoryClient,
        outbox: HistoryOutbox,
        models: ModelRegistry,
        intents: IntentStep | None = None,
    ) -> None:
        self.settings = settings
        self.intents = intents
        self.generator = generator
        self.safety = safety
        self.history = history
        self.outbox = outbox
        self.models = models

    async def prepare(
        self,
        request: ChatCompletionRequest,
        principal: Principal,
        checking: ModerationTask | None = None,
    ) -> PreparedChat:
        """Builds the context of a validated request. `checking`: its input moderation, when
        admission started it (start_moderation), which runs on meanwhile. With intent routing,
        the newest user message is classified while input moderation of the request's messages
        runs, and the route's actions apply before the model is resolved. In a stored
        conversation the newest message is embedded while the conversation is read, then
        classified with the conversation's earlier user turns (the route file's context
        window)."""
        if self.intents is None:
            try:
                prepared = await self._build(request, principal)
            except BaseException:
                if checking is not None:
                    checking.cancel()
                raise
            prepared.input_moderation = checking
            return prepared
        checking = checking or self.start_moderation(request)
        embedding = self.intents.prefetch(request) if request.conversation_id else None
        try:
            stored = await self._read_conversation(request, principal.user_id)
            earlier = stored.messages if stored and request.parent_message_id != "" else []
            routed = await self.intents.route(request, earlier)
            prepared = await self._build(
                routed.request, principal, routed.system_prompt, stored, preloaded=True
            )
        except BaseException:
            for task in (checking, embedding):
                if task is not None:
                    task.cancel()
            raise
        prepared.intent = routed.match
        prepared.safety_thresholds = routed.safety
        prepared.input_moderation = checking
        self.intents.note_reask(prepared)
        return prepared

    def start_moderation(
        self, request: ChatCompletionRequest, cacheable: bool = False
    ) -> ModerationTask | None:
        """Input moderation of the request's messages, started now, to run beside what comes
        before the generation (the slot wait, the context, intent routing); awaited
        before the generator is called (moderate_input), so nothing is generated before it
        passed. None when input moderation is off, or when the cache may answer the request
        (`cacheable`; a hit needs no moderation: it starts after the lookup instead)."""
        if not self.settings.moderate_input or cacheable:
            return None
        task = asyncio.create_task(
            moderation.classify_input(self.safety, [m.text() for m in request.messages])
        )
        # A task nobody awaits (a cache hit, a failed request) must not log its error.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def discard_moderation(self, prepared: PreparedChat) -> None:
        """Input moderation is not needed (a cached answer): stops a started one."""
        if prepared.input_moderation is not None:
            prepared.input_moderation.cancel()

    async def _build(
        self,
        request: ChatCompletionRequest,
        principal: Principal,
        system_prompt: str | None = None,
        stored: history_pb2.GetConversationResponse | None = None,
        preloaded: bool = False,
    ) -> PreparedChat:
        # The user's id picks the model of a split alias (one user, one version).
        model = await self.models.resolve(request.model, user=principal.user_id)
        new_messages: list[tuple[str, str]] = [(m.role, m.text()) for m in request.messages]
        prepared = PreparedChat(
            request=request,
            principal=principal,
            model=model,
            context=[],
            new_messages=new_messages,
            max_tokens=effective_max_tokens(request, principal, self.settings),
        )
        self._check_storable(request, principal.user_id)
        if not preloaded:
            stored = await self._read_conversation(request, principal.user_id)
        prepared.context_parts = ContextInputs(
            stored=self._load_conversation(prepared, stored),
            new=[convert.chat_message(role, text) for role, text in new_messages],
            prompts=[system_prompt] if system_prompt else [],
        )
        if prepared.care:
            prepared.context_parts.care_prompt = self.settings.input_care_prompt
        prepared.context = await self._assemble(prepared)
        # Never cached with care: a cache hit skips input moderation, and with it the care.
        if self.settings.cache_enabled and request.is_deterministic() and not prepared.care:
            prepared.cache_key = cache_key(
                principal.user_id,
                convert.cache_material(request, model, prepared.context, prepared.max_tokens),
            )
        return prepared

    def _check_storable(self, request: ChatCompletionRequest, user_id: str) -> None:
        if request.parent_message_id is not None and not request.conversation_id:
            raise errors.invalid_request(
                "parent_message_id needs conversation_id.", param="parent_message_id"
            )
        if (request.conversation_id or request.store) and self.outbox.full_for(user_id):
            # History has been down long enough to fill the outbox, or this user's share of it.
            # Refuse before generating: an answer that could not be kept would break "nothing
            # is lost", and one user's backlog must not refuse everyone's stored chats.
            raise errors.service_unavailable(
                f"History is unavailable and {self.outbox.depth} exchanges are waiting to be"
                " stored; retry later, or send the request without store/conversation_id.",
                self.settings.retry_after_s,
            )

    async def _read_conversation(
        self, request: ChatCompletionRequest, user_id: str
    ) -> history_pb2.GetConversationResponse | None:
        """The stored messages the request continues (None without conversation_id)."""
        if not request.conversation_id:
            return None
        query = history_pb2.GetConversationRequest(
            user_id=user_id, conversation_id=request.conversation_id
        )
        if request.parent_message_id:
            query.message_id = request.parent_message_id
        # Read even for a new root (""), which takes no context: the read is the owner check
        # (another user's or an unknown conversation is a 404 before anything is generated).
        return await self.history.get_conversation(query)

    def _load_conversation(
        self, prepared: PreparedChat, stored: history_pb2.GetConversationResponse | None
    ) -> Messages:
        """Where the exchange will be stored, and the stored messages it continues."""
        request = prepared.request
        if not request.conversation_id:
            if request.store:
                prepared.conversation_id = f"conv_{uuid.uuid4().hex}"
                prepared.create_conversation = True
            return []
        prepared.conversation_id = request.conversation_id
        prepared.parent_message_id = request.parent_message_id
        if stored is None or request.parent_message_id == "":
            return []
        prepared.previous_turn = previous_turn(stored.messages)
        if self.settings.input_care_categories:
            # A conversation once answered with care keeps the care prompt: its later turns and
            # a regenerated answer are classified without the message that needed it.
            prepared.care = moderation.stored_care(m.moderation_json for m in stored.messages)
        return [convert.chat_message(m.role, m.content) for m in stored.messages]

    async def _assemble(self, prepared: PreparedChat) -> Messages:
        """The context the model sees: an intent route's system prompt (first, never stored),
        then the stored conversation fitted to the window, then the request's own messages;
        the care prompt (never stored) right after the leading system messages, so that none of
        the client's comes after it."""
        parts = prepared.context_parts
        pinned = [convert.chat_message("system", prompt) for prompt in parts.prompts]
        care = [convert.chat_message("system", parts.care_prompt)] if parts.care_prompt else []
        if parts.stored:
            fitted = await self._fit_context(prepared, parts.stored, parts.new, [*pinned, *care])
        else:
            fitted = parts.new
        context = [*pinned, *fitted]
        leading = next((i for i, m in enumerate(context) if m.role != "system"), len(context))
        return [*context[:leading], *care, *context[leading:]]

    async def _fit_context(
        self,
        prepared: PreparedChat,
        stored: Messages,
        new: Messages,
        pinned: Messages,
    ) -> Messages:
        """The stored conversation trimmed, oldest messages first, so that it and the request's
        messages fit the model's window with room for the answer. Messages the request sends
        itself are never dropped: when they alone do not fit, the generator says so (400).
        The system prompts the gateway puts first (`pinned`) are counted with them."""
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

        async def count(messages: Messages) -> int:
            return await count_tokens(self.generator, prepared.model, [*pinned, *messages])

        fitted = await fit_context(parts, budget, count)
        # Fitted again with the care prompt: only the messages dropped beyond the first fit.
        more = fitted.dropped - prepared.context_dropped
        prepared.context_dropped = fitted.dropped
        if more > 0:
            CONTEXT_TRIMMED.labels(prepared.model).inc(more)
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

    async def moderate_input(self, prepared: PreparedChat) -> moderation.InputJudgement | None:
        """Refuses the request when any message of it is flagged (fail closed: safety down is
        a 503, never an unmoderated generation), unless only users' messages are flagged, and
        only in the care categories: then the care prompt joins the context (moderation.py).
        Messages loaded from history were moderated when they were stored (a conversation
        answered with care keeps the care prompt: _load_conversation). Returns the judgement
        (None with input moderation off)."""
        texts = [text for _, text in prepared.new_messages]
        roles = [role for role, _ in prepared.new_messages]
        care = self.settings.input_care_categories
        if prepared.input_moderation is not None:
            verdicts = await prepared.input_moderation
            judged = moderation.judge_input(
                texts, verdicts, prepared.safety_thresholds, care, roles
            )
        elif self.settings.moderate_input:
            judged = await moderation.moderate_input(
                self.safety, texts, prepared.safety_thresholds, care, roles
            )
        else:
            return None
        prepared.input_verdicts = judged.verdicts
        if judged.care:
            prepared.care = sorted({*prepared.care, *judged.care})
            if not prepared.context_parts.care_prompt:
                # A stored conversation is fitted again with it (a few more tokens may drop
                # one more old exchange).
                prepared.context_parts.care_prompt = self.settings.input_care_prompt
                prepared.context = await self._assemble(prepared)
        return judged


async def count_tokens(generator: GeneratorClient, model: str, messages: Messages) -> int:
    """The prompt tokens of `messages` as the generator's tokenizer and chat template see them."""
    reply = await generator.count_tokens(
        generator_pb2.CountTokensRequest(
            model=model, chat=generator_pb2.ChatInput(messages=messages)
        )
    )
    return int(reply.token_count)
