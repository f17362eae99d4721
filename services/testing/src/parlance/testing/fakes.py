"""Test doubles of the gateway's three gRPC clients, for the in-process gateway tests.

They stand in for GeneratorClient, SafetyClient and HistoryClient (same method names and
message types) where a test is about the gateway's own behaviour: validation, error shapes,
headers, SSE chunk shapes, limits, moderation windows, cache replay, stopped streams, history
writes. The real services are tested as processes in tests/. Each fake records what it was
asked, and fails like the real client does (an OpenAI-shaped APIError) when told to.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from parlance.gateway import errors
from parlance.generator.v1 import generator_pb2
from parlance.history.v1 import history_pb2
from parlance.safety.v1 import safety_pb2

FAKE_MODEL = "fake-model"
# FakeGenerator's embedding model (listed only when a test turns embedding on).
FAKE_EMBED_MODEL = "fake-embed"
FAKE_EMBED_DIM = 256
# FakeGenerator's reward model (listed only when a test turns reward on).
FAKE_REWARD_MODEL = "fake-reward"


def fake_reward(text: str) -> float:
    """FakeGenerator's default reward: the candidate's word count (a stand-in for a reward
    model that tests can predict, not a model of preference)."""
    return float(len(text.split()))


def _unavailable(dependency: str) -> errors.APIError:
    return errors.service_unavailable(f"The {dependency} service is unavailable; retry later.", 5)


@dataclass
class Script:
    """What FakeGenerator answers to one Generate call: `deltas` for every choice, each one
    token; then the finish reason; usage on the last message. `fail_after`: raise `error`
    after that many deltas; `hang_after`: wait forever after that many deltas (a stream the
    client then stops)."""

    deltas: list[str] = field(default_factory=lambda: ["Hello", " there", ", friend."])
    finish_reason: generator_pb2.FinishReason = generator_pb2.FINISH_REASON_STOP
    fail_after: int | None = None
    hang_after: int | None = None
    error: errors.APIError = field(default_factory=lambda: _unavailable("generator"))
    logprobs: bool = False
    # Per choice index, its own deltas instead of `deltas` (choices beyond the list use
    # `deltas`): candidates that differ, for best_of and comparisons.
    choices: list[list[str]] | None = None

    def deltas_of(self, index: int) -> list[str]:
        if self.choices is not None and index < len(self.choices):
            return self.choices[index]
        return self.deltas


class FakeGenerator:
    """A GeneratorClient double: answers every Generate with its `script` (or with
    `scripts[i]` for the i-th call) and counts prompt tokens as characters / 4."""

    # No generator targets of its own: tests of models loaded at run time use
    # FakeTargetsGenerator (fake_targets.py).
    targets: tuple[Any, ...] = ()

    def __init__(self, max_model_len: int = 2048) -> None:
        self.max_model_len = max_model_len
        self.script = Script()
        # Per-call scripts, taken in order before falling back to `script`.
        self.scripts: list[Script] = []
        self.requests: list[generator_pb2.GenerateRequest] = []
        self.count_requests: list[generator_pb2.CountTokensRequest] = []
        self.down = False
        # Set while a generation is between its messages (a stopped stream can wait for it).
        self.in_flight = 0
        self.cancelled = 0
        # Chat models listed besides FAKE_MODEL (a test of routing between models adds some).
        self.extra_chat_models: list[str] = []
        # Lists FAKE_EMBED_MODEL and answers Embed (bag-of-words vectors); embed_down makes
        # Embed alone fail (the embedding model down while chat works).
        self.embedding = False
        self.embed_down = False
        self.embed_requests: list[generator_pb2.EmbedRequest] = []
        # Lists FAKE_REWARD_MODEL and answers Score with `score_fn` of each candidate.
        self.reward = False
        self.score_fn: Callable[[str], float] = fake_reward
        self.score_requests: list[generator_pb2.ScoreRequest] = []

    def _info(self, model_id: str, task: generator_pb2.ModelTask) -> generator_pb2.ModelInfo:
        return generator_pb2.ModelInfo(
            id=model_id,
            created=1_700_000_000,
            owned_by="parlance",
            max_model_len=self.max_model_len,
            engine="fake",
            task=task,
        )

    async def list_models(self) -> generator_pb2.ListModelsResponse:
        if self.down:
            raise _unavailable("generator")
        chat = [FAKE_MODEL, *self.extra_chat_models]
        models = [self._info(m, generator_pb2.MODEL_TASK_CHAT) for m in chat]
        if self.embedding:
            models.append(self._info(FAKE_EMBED_MODEL, generator_pb2.MODEL_TASK_EMBED))
        if self.reward:
            models.append(self._info(FAKE_REWARD_MODEL, generator_pb2.MODEL_TASK_REWARD))
        return generator_pb2.ListModelsResponse(models=models)

    async def score(self, request: generator_pb2.ScoreRequest) -> generator_pb2.ScoreResponse:
        self.score_requests.append(request)
        if self.down or not self.reward:
            raise _unavailable("generator")
        return generator_pb2.ScoreResponse(
            scores=[self.score_fn(c) for c in request.candidates], model=request.model
        )

    async def export_encoder(self, request: generator_pb2.ExportEncoderRequest) -> Any:
        # As a generator whose embedding models PyTorch serves: the router keeps Embed calls.
        from parlance.gateway.clients.generator import EncoderNotExportable

        raise EncoderNotExportable(f"the fake generator exports no encoder ({request.model})")

    async def embed(self, request: generator_pb2.EmbedRequest) -> generator_pb2.EmbedResponse:
        """Deterministic bag-of-words vectors (each lower-cased word hashed with CRC-32 to
        one of FAKE_EMBED_DIM dimensions, unit length): texts that share words are similar.
        A stand-in for the embedding model, not a model of meaning."""
        self.embed_requests.append(request)
        if self.down or self.embed_down or not self.embedding:
            raise _unavailable("generator")
        embeddings = []
        for item in request.inputs:
            vector = [0.0] * FAKE_EMBED_DIM
            words = re.findall(r"[a-z0-9]+", item.text.lower())
            for word in words:
                vector[zlib.crc32(word.encode()) % FAKE_EMBED_DIM] += 1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            embeddings.append(
                generator_pb2.Embedding(
                    values=[v / norm for v in vector], token_count=max(1, len(words))
                )
            )
        return generator_pb2.EmbedResponse(embeddings=embeddings)

    async def count_tokens(
        self, request: generator_pb2.CountTokensRequest
    ) -> generator_pb2.CountTokensResponse:
        self.count_requests.append(request)
        if self.down:
            raise _unavailable("generator")
        chars = sum(len(m.content) + 4 for m in request.chat.messages)
        return generator_pb2.CountTokensResponse(
            token_count=max(1, chars // 4), max_model_len=self.max_model_len
        )

    async def generate(
        self, request: generator_pb2.GenerateRequest
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        self.requests.append(request)
        if self.down:
            raise _unavailable("generator")
        script = self.scripts.pop(0) if self.scripts else self.script
        n = request.sampling.n or 1
        self.in_flight += 1
        texts = [script.deltas_of(c) for c in range(n)]
        steps = max(len(t) for t in texts)
        try:
            for i in range(steps):
                if script.fail_after is not None and i >= script.fail_after:
                    raise script.error
                if script.hang_after is not None and i >= script.hang_after:
                    await asyncio.Event().wait()
                yield generator_pb2.GenerateResponse(
                    choices=[
                        self._delta(c, t[i], script, request)
                        for c, t in enumerate(texts)
                        if i < len(t)
                    ],
                    model=request.model,
                )
            if script.fail_after is not None and script.fail_after >= steps:
                raise script.error
            prompt = sum(len(m.content) + 4 for m in request.chat.messages) // 4
            yield generator_pb2.GenerateResponse(
                choices=[
                    generator_pb2.ChoiceDelta(index=c, finish_reason=script.finish_reason)
                    for c in range(n)
                ],
                usage=generator_pb2.Usage(
                    prompt_tokens=max(1, prompt), completion_tokens=sum(len(t) for t in texts)
                ),
                model=request.model,
            )
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    @staticmethod
    def _delta(
        index: int, text: str, script: Script, request: generator_pb2.GenerateRequest
    ) -> generator_pb2.ChoiceDelta:
        delta = generator_pb2.ChoiceDelta(index=index, text=text, token_count=1)
        if script.logprobs and request.sampling.logprobs:
            delta.logprobs.append(
                generator_pb2.TokenLogprob(
                    token=text, logprob=-0.5, token_bytes=text.encode(), top_logprobs=[]
                )
            )
        return delta

    # The routing side of the real (pooled) client: one target that always lists FAKE_MODEL.

    def seconds_since_refresh(self) -> float:
        return 0.0

    async def refresh(self) -> None:
        pass

    def status(self) -> dict[str, dict[str, object]]:
        serving = 0 if self.down else 1
        status: dict[str, dict[str, object]] = {
            m: {"task": "chat", "serving": serving, "replicas": 1}
            for m in [FAKE_MODEL, *self.extra_chat_models]
        }
        if self.embedding:
            status[FAKE_EMBED_MODEL] = {"task": "embed", "serving": serving, "replicas": 1}
        if self.reward:
            status[FAKE_REWARD_MODEL] = {"task": "reward", "serving": serving, "replicas": 1}
        return status

    async def check_health(self, timeout_s: float = 1.0) -> bool:
        return not self.down

    async def close(self) -> None:
        pass


class FakeSafety:
    """A SafetyClient double: flags any text that contains one of `flag_words` (in the
    "harassment" category); `down` makes every call fail as an unreachable service does."""

    def __init__(self, flag_words: tuple[str, ...] = ("badword",)) -> None:
        self.flag_words = flag_words
        # Words that flag a category of their own: {"hopeless": "self-harm"}.
        self.category_words: dict[str, str] = {}
        self.calls: list[tuple[list[str], int]] = []
        self.down = False
        # Seconds each classification takes (to hold windows back).
        self.delay_s = 0.0
        self.export_requests = 0  # ExportClassifier calls (the gateway's input pre-check)

    def _verdict(self, text: str) -> safety_pb2.Classification:
        flagged = any(word in text.lower() for word in self.flag_words)
        categories = [
            safety_pb2.CategoryResult(
                category="harassment", score=0.99 if flagged else 0.01, flagged=flagged
            )
        ]
        for category in sorted(set(self.category_words.values())):
            hit = any(w in text.lower() for w, c in self.category_words.items() if c == category)
            categories.append(
                safety_pb2.CategoryResult(
                    category=category, score=0.99 if hit else 0.01, flagged=hit
                )
            )
        return safety_pb2.Classification(
            flagged=any(c.flagged for c in categories), categories=categories
        )

    async def classify(self, texts: list[str], direction: int) -> safety_pb2.ClassifyResponse:
        self.calls.append((list(texts), direction))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            raise _unavailable("safety")
        return safety_pb2.ClassifyResponse(
            results=[self._verdict(t) for t in texts], model="fake-safety"
        )

    async def info(self) -> safety_pb2.GetClassifierInfoResponse:
        return safety_pb2.GetClassifierInfoResponse(
            model="fake-safety", evaluated_categories=["harassment"]
        )

    async def export_classifier(
        self, check_texts: list[str]
    ) -> safety_pb2.ExportClassifierResponse:
        # Word matching is not a linear text model: the gateway's input pre-check stays off,
        # and every input waits for this double's verdict.
        from parlance.gateway.clients.safety import ClassifierNotExportable

        self.export_requests += 1
        raise ClassifierNotExportable("the test double's classifier is not exportable")

    def texts(self, direction: int) -> list[str]:
        """Every text classified in `direction`, in order."""
        return [t for texts, d in self.calls if d == direction for t in texts]

    async def check_health(self, timeout_s: float = 1.0) -> bool:
        return not self.down

    async def close(self) -> None:
        pass


@dataclass
class _Conversation:
    user_id: str
    conversation: history_pb2.Conversation
    messages: dict[str, history_pb2.Message] = field(default_factory=dict)


class FakeHistory:
    """A HistoryClient double: conversations as message trees in memory, owned by a user (any
    other user gets NOT_FOUND, as from history). The active branch ends at the newest message.
    `down` fails every call as an unreachable service does."""

    def __init__(self) -> None:
        self.conversations: dict[str, _Conversation] = {}
        self.appends: list[history_pb2.AppendMessagesRequest] = []
        self.comparisons: dict[frozenset[str], history_pb2.Comparison] = {}
        self.implicit_feedback: list[history_pb2.PutImplicitFeedbackRequest] = []
        self.down = False

    def _owned(self, user_id: str, conversation_id: str) -> _Conversation:
        if self.down:
            raise _unavailable("history")
        found = self.conversations.get(conversation_id)
        if found is None or found.user_id != user_id:
            raise errors.not_found(f"Conversation {conversation_id} not found.")
        return found

    def create(self, user_id: str, conversation_id: str = "", title: str = "") -> str:
        conversation_id = conversation_id or f"conv_{uuid.uuid4().hex}"
        self.conversations[conversation_id] = _Conversation(
            user_id, history_pb2.Conversation(id=conversation_id, title=title)
        )
        return conversation_id

    def _path(self, conv: _Conversation, leaf_id: str) -> list[history_pb2.Message]:
        path: list[history_pb2.Message] = []
        current: str | None = leaf_id
        while current:
            message = conv.messages[current]
            path.append(message)
            current = message.parent_id if message.HasField("parent_id") else None
        return path[::-1]

    async def get_conversation(
        self, request: history_pb2.GetConversationRequest
    ) -> history_pb2.GetConversationResponse:
        conv = self._owned(request.user_id, request.conversation_id)
        leaf = request.message_id if request.HasField("message_id") else None
        if leaf is not None and leaf not in conv.messages:
            raise errors.not_found(f"Message {leaf} not found.", param="message_id")
        leaf = leaf or conv.conversation.active_leaf_id
        messages = self._path(conv, leaf) if leaf else []
        return history_pb2.GetConversationResponse(
            conversation=conv.conversation, messages=messages
        )

    async def append_messages(
        self, request: history_pb2.AppendMessagesRequest
    ) -> history_pb2.AppendMessagesResponse:
        if self.down:
            raise _unavailable("history")
        if request.conversation_id not in self.conversations and request.create_if_missing:
            self.create(request.user_id, request.conversation_id, request.title)
        conv = self._owned(request.user_id, request.conversation_id)
        self.appends.append(request)
        parent: str | None = conv.conversation.active_leaf_id or None
        stored = []
        for message in request.messages:
            copy = history_pb2.Message()
            copy.CopyFrom(message)
            copy.conversation_id = request.conversation_id
            # As history: any message may name its parent (a comparison's second answer
            # names the question, beside the first).
            if message.HasField("parent_id"):
                parent = message.parent_id or None
            if parent:
                copy.parent_id = parent
            else:
                copy.ClearField("parent_id")
            conv.messages[copy.id] = copy
            parent = copy.id
            stored.append(copy)
        if parent:
            conv.conversation.active_leaf_id = parent
        return history_pb2.AppendMessagesResponse(conversation=conv.conversation, messages=stored)

    async def update_conversation(
        self, request: history_pb2.UpdateConversationRequest
    ) -> history_pb2.UpdateConversationResponse:
        conv = self._owned(request.user_id, request.conversation_id)
        if request.HasField("title"):
            conv.conversation.title = request.title
        if request.HasField("archived"):
            conv.conversation.archived = request.archived
        return history_pb2.UpdateConversationResponse(conversation=conv.conversation)

    async def create_conversation(
        self, request: history_pb2.CreateConversationRequest
    ) -> history_pb2.CreateConversationResponse:
        if self.down:
            raise _unavailable("history")
        conversation_id = self.create(request.user_id, request.conversation_id, request.title)
        return history_pb2.CreateConversationResponse(
            conversation=self.conversations[conversation_id].conversation
        )

    async def delete_conversation(
        self, request: history_pb2.DeleteConversationRequest
    ) -> history_pb2.DeleteConversationResponse:
        self._owned(request.user_id, request.conversation_id)
        del self.conversations[request.conversation_id]
        return history_pb2.DeleteConversationResponse()

    async def record_comparison(
        self, request: history_pb2.RecordComparisonRequest
    ) -> history_pb2.RecordComparisonResponse:
        """As history: two different generated sibling answers of the caller's conversation;
        the latest pick of a pair wins; the chosen answer's branch becomes active."""
        conv = self._owned(request.user_id, request.conversation_id)
        sides = []
        for param in ("chosen_message_id", "rejected_message_id"):
            message = conv.messages.get(getattr(request, param))
            if message is None:
                raise errors.not_found(f"Message {getattr(request, param)} not found.", param)
            if message.role != "assistant" or not message.generated:
                raise errors.invalid_request("Only generated answers can be compared.", param)
            sides.append(message)
        chosen, rejected = sides
        if chosen.id == rejected.id or chosen.parent_id != rejected.parent_id:
            raise errors.invalid_request(
                "The two answers must be different siblings.", "rejected_message_id"
            )
        comparison = history_pb2.Comparison(
            conversation_id=request.conversation_id,
            parent_id=chosen.parent_id,
            chosen_message_id=chosen.id,
            rejected_message_id=rejected.id,
            chosen_model=chosen.model,
            rejected_model=rejected.model,
        )
        self.comparisons[frozenset((chosen.id, rejected.id))] = comparison
        conv.conversation.active_leaf_id = chosen.id
        return history_pb2.RecordComparisonResponse(
            comparison=comparison, conversation=conv.conversation
        )

    async def put_implicit_feedback(
        self, request: history_pb2.PutImplicitFeedbackRequest
    ) -> history_pb2.PutImplicitFeedbackResponse:
        if self.down:
            raise _unavailable("history")
        self.implicit_feedback.append(request)
        return history_pb2.PutImplicitFeedbackResponse()

    async def get_model_report(
        self, request: history_pb2.GetModelReportRequest
    ) -> history_pb2.GetModelReportResponse:
        """Answers per model and comparison outcomes (no ratings: the fake keeps none)."""
        if self.down:
            raise _unavailable("history")
        answers: dict[str, int] = {}
        for conv in self.conversations.values():
            for message in conv.messages.values():
                if message.role == "assistant" and message.generated:
                    answers[message.model] = answers.get(message.model, 0) + 1
        outcomes: dict[tuple[str, str], int] = {}
        for c in self.comparisons.values():
            key = (c.chosen_model, c.rejected_model)
            outcomes[key] = outcomes.get(key, 0) + 1
        return history_pb2.GetModelReportResponse(
            models=[
                history_pb2.ModelReportRow(model=m, answers=n) for m, n in sorted(answers.items())
            ],
            comparisons=[
                history_pb2.ComparisonOutcome(chosen_model=a, rejected_model=b, count=n)
                for (a, b), n in sorted(outcomes.items())
            ],
        )

    def stored(self, conversation_id: str) -> list[history_pb2.Message]:
        """The conversation's active branch, root first."""
        conv = self.conversations[conversation_id]
        leaf = conv.conversation.active_leaf_id
        return self._path(conv, leaf) if leaf else []

    async def check_health(self, timeout_s: float = 1.0) -> bool:
        return not self.down

    async def close(self) -> None:
        pass


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Waits (on the event loop) until `condition()` holds; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
