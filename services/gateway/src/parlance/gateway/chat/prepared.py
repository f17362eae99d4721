"""What the stages of one chat completion hand each other: the prepared request, what the
generation released so far, and what a stream has sent."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from parlance.gateway import convert, moderation
from parlance.gateway.auth import Principal
from parlance.gateway.cache import CachedChoice, CompletionRecord
from parlance.gateway.chat.compare import Comparison
from parlance.gateway.chat.protocol import BestOfInfo, ChatCompletionRequest
from parlance.gateway.intents import IntentMatch, PreviousTurn
from parlance.generator.v1 import generator_pb2
from parlance.safety.v1 import safety_pb2

# finish_reason of a stored answer whose stream the client stopped.
CANCELLED = "cancelled"


@dataclass
class ContextInputs:
    """What a request's context is assembled from (prepare.py, Preparer._assemble): the
    stored conversation it continues, its own messages, and the system prompts the gateway
    puts first."""

    stored: list[generator_pb2.ChatMessage] = field(default_factory=list)
    new: list[generator_pb2.ChatMessage] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    care_prompt: str | None = None


@dataclass
class PreparedChat:
    request: ChatCompletionRequest
    principal: Principal
    model: str
    context: list[generator_pb2.ChatMessage]
    # Messages of this request, to be stored before the answer.
    new_messages: list[tuple[str, str]]
    # The completion tokens asked of the generator per choice (see effective_max_tokens).
    max_tokens: int
    # Input moderation's verdict of each of new_messages ("" when not classified).
    input_verdicts: list[str] = field(default_factory=list)
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
    # Intent routing (chat/intent.py): the route taken (None: routing is off), its per-category
    # input thresholds, and input moderation started beside the classification.
    intent: IntentMatch | None = None
    safety_thresholds: dict[str, float] = field(default_factory=dict)
    input_moderation: asyncio.Task[safety_pb2.ClassifyResponse | None] | None = None
    # What `context` was assembled from (assembled again when care adds its prompt), and how
    # many stored messages fitting it to the window dropped.
    context_parts: ContextInputs = field(default_factory=ContextInputs)
    context_dropped: int = 0
    # Input flagged only in the care categories, in this request or earlier in its stored
    # conversation: those categories; the request is answered with the care prompt in its
    # context (moderation.judge_input), never cached, and gets no model-written title.
    care: list[str] = field(default_factory=list)
    # The stored answer this request follows and its question (the re-ask signal's input).
    previous_turn: PreviousTurn | None = None
    # Answered with two candidates side by side (chat/compare.py); the request then has n=2.
    comparison: Comparison | None = None
    # Answered with the best of k candidates (chat/best_of.py): how it was chosen.
    best_of: BestOfInfo | None = None

    @property
    def n(self) -> int:
        return self.request.n or 1

    @property
    def include_usage(self) -> bool:
        options = self.request.stream_options
        return bool(options and options.include_usage)

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
class Progress:
    """What a generation released so far (for usage, caching, history and metrics)."""

    choices: dict[int, CachedChoice] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens_after_first: int = 0
    # Per choice, output moderation's verdict of what was released (moderation_json).
    verdicts: dict[int, str] = field(default_factory=dict)

    def add_text(self, event: moderation.TextEvent, now: float) -> None:
        choice = self.choices.setdefault(event.index, CachedChoice(index=event.index))
        if event.logprobs:
            tokens = convert.logprobs(event.logprobs)
            choice.add(event.text, tokens.model_dump()["content"] if tokens else [])
        elif event.text:
            choice.add(event.text, [])
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
            choices=[self._choice(i) for i in range(n)],
            prompt_tokens=self.prompt_tokens or 0,
            completion_tokens=self.completion_tokens or 0,
        )

    def _choice(self, index: int) -> CachedChoice:
        choice = self.choices.get(index, CachedChoice(index=index))
        choice.moderation_json = self.verdicts.get(index, "")
        return choice


@dataclass
class Sent:
    """What a stream has handed to the client: per choice, the text of the chunks whose send
    completed (always released text: held-back text is never in a chunk), and the finish
    reasons sent. A stopped stream stores exactly this."""

    deltas: dict[int, list[str]] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)

    def text(self, index: int, text: str) -> None:
        if text:
            self.deltas.setdefault(index, []).append(text)

    def record(self, prepared: PreparedChat, progress: Progress) -> CompletionRecord:
        return CompletionRecord(
            model=prepared.model,
            choices=[
                CachedChoice(
                    index=i,
                    deltas=list(self.deltas.get(i, [])),
                    finish_reason=self.finish_reasons.get(i, CANCELLED),
                    moderation_json=progress.verdicts.get(i, ""),
                )
                for i in range(prepared.n)
            ],
            prompt_tokens=progress.prompt_tokens or 0,
            # Every token the engine produced until the cut (held-back ones included): what
            # the answer cost, as TPM counts it.
            completion_tokens=prepared.generated_tokens,
        )
