"""Best-of-n (issue 16): `best_of: k` generates k candidates and returns the one the reward
model scores highest.

The k candidates are one generator call (n=k), each output moderated on its own as any choice
is: a flagged candidate is never returned nor scored. The others are scored in one Score call
by the reward model (GATEWAY_REWARD_MODEL, else the newest model with task reward that a
generator serves; none: 400), with the conversation as the generator saw it; the best one
(the first of equal scores) is the answer, as choice 0. When every candidate was flagged the
answer is what the single-answer flow gives for a flagged answer: the first candidate's text
released before its flagged window, finish_reason "content_filter".

What it costs the caller: `usage` and the TPM limit count all k completions (the engine
generated them); the Score call is the server's. A stream starts once the answer is chosen:
its first token comes after all k candidates and their scoring (README, "Best-of-n").
The answer is never cached (k samples are the point) and a stored conversation keeps the
returned answer, with its model, not the others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

from parlance.gateway import errors
from parlance.gateway.cache import CachedChoice, CompletionRecord
from parlance.gateway.chat.complete import Completion, observe
from parlance.gateway.chat.generate import Generation
from parlance.gateway.chat.prepare import Preparer
from parlance.gateway.chat.prepared import PreparedChat, Progress
from parlance.gateway.chat.protocol import (
    BestOfInfo,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
)
from parlance.gateway.chat.render import completion
from parlance.gateway.chat.stream import Streamer
from parlance.gateway.chat.timing import ServerTiming
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.headers import ResponseHeaders
from parlance.gateway.metrics import BEST_OF_CHOSEN, REWARD_SCORE
from parlance.gateway.models import REFRESH_ON_MISS_S, ModelRegistry
from parlance.gateway.routing import task_of
from parlance.generator.v1 import generator_pb2

PARAM = "best_of"
FLAGGED = "content_filter"
# The reward model reads the newest turns (its engine keeps the tail of a long sequence):
# older turns beyond this many characters are not sent at all.
REWARD_CONTEXT_CHARS = 16_000
NO_REWARD_MODEL = "reward_model_not_found"


def candidates(request: ChatCompletionRequest) -> int:
    """k: the candidates the request asks for (1: an ordinary answer)."""
    return request.best_of or 1


def validate(request: ChatCompletionRequest, settings: GatewaySettings) -> None:
    """The 400 of a best_of the server cannot give (whether a reward model is served is
    checked when the request is answered: it needs the generators' listing)."""
    k = candidates(request)
    if k == 1:
        return
    if settings.max_best_of < 2:
        raise errors.invalid_request(
            "best_of is off on this server (GATEWAY_MAX_BEST_OF is below 2).", PARAM
        )
    if k > settings.max_best_of:
        raise errors.invalid_request(f"best_of must be at most {settings.max_best_of}.", PARAM)
    if (request.n or 1) > 1:
        raise errors.invalid_request(
            "best_of cannot be combined with n > 1: best_of returns one answer, the best of "
            "best_of candidates.",
            PARAM,
        )


class RewardModels:
    """Which reward model scores best_of candidates."""

    def __init__(self, settings: GatewaySettings, models: ModelRegistry) -> None:
        self.configured = settings.reward_model
        self.models = models

    async def current(self) -> str:
        """GATEWAY_REWARD_MODEL, else the newest reward model served (the one registered
        last); 400 when there is none."""
        found = self._pick(await self.models.list())
        if found is None and self.models.generator.seconds_since_refresh() > REFRESH_ON_MISS_S:
            # A reward model may have been registered since the last listing.
            await self.models.generator.refresh()
            found = self._pick(await self.models.list())
        if found is not None:
            return found
        if self.configured:
            message = (
                f"best_of needs the reward model '{self.configured}' (GATEWAY_REWARD_MODEL), "
                "and no generator serves it."
            )
        else:
            message = (
                "best_of needs a reward model, and none is registered: train one "
                "(parlance-train reward) and register it (POST /v1/admin/models)."
            )
        raise errors.invalid_request(message, PARAM, code=NO_REWARD_MODEL)

    def _pick(self, listed: list[generator_pb2.ModelInfo]) -> str | None:
        rewards = [m for m in listed if task_of(m) == "reward"]
        if self.configured:
            wanted = self.configured.lower()
            return next((m.id for m in rewards if m.id.lower() == wanted), None)
        if not rewards:
            return None
        # Newest by load time; of equal times, the one listed last.
        return max(enumerate(rewards), key=lambda item: (item[1].created, item[0]))[1].id


@dataclasses.dataclass
class Selection:
    """The scored candidates and the one returned."""

    chosen: CachedChoice
    info: BestOfInfo


class BestOf:
    """Answers a prepared best_of request (ChatService hands it over after preparation)."""

    def __init__(
        self,
        settings: GatewaySettings,
        generator: GeneratorClient,
        models: ModelRegistry,
        preparer: Preparer,
        generation: Generation,
        completion: Completion,
        streamer: Streamer,
    ) -> None:
        self.generator = generator
        self.rewards = RewardModels(settings, models)
        self.preparer = preparer
        self.generation = generation
        self.completion = completion
        self.streamer = streamer

    async def respond(
        self, prepared: PreparedChat, headers: ResponseHeaders, timing: ServerTiming
    ) -> ChatCompletion | AsyncIterator[bytes]:
        k = candidates(prepared.request)
        reward_model = await self.rewards.current()
        # k samples are the point: never a cached answer, and never cached as one.
        prepared.cache_key = None
        headers["x-cache"] = "bypass"
        await self.preparer.moderate_input(prepared)
        timing.mark("moderation")
        # The engine is asked for k choices: the request as the generator sees it has n=k.
        prepared.request = prepared.request.model_copy(update={"n": k})
        progress = Progress()
        record, logprobs = await self.generation.run(prepared, progress)
        timing.mark("generation")
        selection = await self.select(prepared, record, reward_model)
        timing.mark("reward")
        headers["server-timing"] = timing.header()
        prepared.best_of = selection.info
        answer = self._answer(record, selection.chosen)
        # The caller's first token is the chosen answer's, now: that is its time to first
        # token (no per-token time: it arrives at once).
        now = time.monotonic()
        shown = Progress(
            prompt_tokens=progress.prompt_tokens,
            completion_tokens=progress.completion_tokens,
            first_token_at=now if progress.first_token_at is not None else None,
            last_token_at=now if progress.first_token_at is not None else None,
        )
        if prepared.request.stream:
            observe(prepared, shown, answer)
            return self.streamer.replay(prepared, answer)
        await self.completion.finish(prepared, shown, answer)
        chosen_logprobs: dict[int, ChoiceLogprobs | None] = {
            0: logprobs.get(selection.chosen.index)
        }
        return completion(prepared, answer, chosen_logprobs)

    async def select(
        self, prepared: PreparedChat, record: CompletionRecord, reward_model: str
    ) -> Selection:
        """Scores the candidates moderation let through; the best one (the first of equal
        scores) is chosen. Every candidate flagged: the first, unscored."""
        k = len(record.choices)
        eligible = [c for c in record.choices if c.finish_reason != FLAGGED]
        scores: list[float | None] = [None] * k
        if not eligible:
            BEST_OF_CHOSEN.labels(str(k), "none").inc()
            info = BestOfInfo(n=k, chosen_index=0, scores=scores, reward_model=reward_model)
            return Selection(record.choices[0], info)
        reply = await self.generator.score(
            generator_pb2.ScoreRequest(
                request_id=prepared.completion_id,
                model=reward_model,
                messages=reward_context(prepared.context, eligible),
                candidates=[c.text for c in eligible],
            )
        )
        for choice, score in zip(eligible, reply.scores, strict=True):
            scores[choice.index] = round(float(score), 4)
        chosen = max(eligible, key=lambda c: (scores[c.index], -c.index))
        score = scores[chosen.index]
        REWARD_SCORE.labels(reward_model).observe(score or 0.0)
        BEST_OF_CHOSEN.labels(str(k), str(chosen.index)).inc()
        info = BestOfInfo(
            n=k, chosen_index=chosen.index, score=score, scores=scores, reward_model=reward_model
        )
        return Selection(chosen, info)

    @staticmethod
    def _answer(record: CompletionRecord, chosen: CachedChoice) -> CompletionRecord:
        """The response's record: the chosen candidate as choice 0, the usage of all k."""
        return CompletionRecord(
            model=record.model,
            choices=[dataclasses.replace(chosen, index=0)],
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
        )


def reward_context(
    context: list[generator_pb2.ChatMessage], eligible: list[CachedChoice]
) -> list[generator_pb2.ChatMessage]:
    """The newest turns of the context, within REWARD_CONTEXT_CHARS with the longest
    candidate (at least the newest turn)."""
    budget = REWARD_CONTEXT_CHARS - max(len(c.text) for c in eligible)
    kept: list[generator_pb2.ChatMessage] = []
    for message in reversed(context):
        if kept and len(message.content) > budget:
            break
        kept.append(message)
        budget -= len(message.content)
    return kept[::-1]
