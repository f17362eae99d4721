"""Implicit feedback (issue 18): a stored user message that re-asks the previous user message
of its conversation (the cosine similarity of their embeddings at or above the route file's
`reask_threshold`) is recorded as a weak negative on the answer between them: history's
PutImplicitFeedback, kind "reask", score = the similarity. History keeps it apart from the
explicit ratings and exports it only when asked (include_implicit).

It runs in the background after the request is prepared, never on the way to the first token:
the newest message's vector is the one classification already computed; the previous user
message costs one more embedding call. With the route file's `reask_embed_model` (another
model than the routing one) both messages are embedded by that model (the previous one is
usually remembered from its own turn). A failure is logged and counted, never the request's.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from parlance.gateway.intents.router import IntentMatch, IntentRouter
from parlance.gateway.metrics import INTENT_REASKS
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)

REASK_KIND = "reask"


@dataclass(frozen=True)
class PreviousTurn:
    """The answer the new message follows, and the user message it answered."""

    user_text: str
    answer_id: str


def previous_turn(messages: Sequence[history_pb2.Message]) -> PreviousTurn | None:
    """From the stored path the new message continues (oldest first): its last answer and the
    user message before it; None when the path does not end with an answer to a user."""
    if not messages or messages[-1].role != "assistant" or not messages[-1].id:
        return None
    user = next((m for m in reversed(messages[:-1]) if m.role == "user"), None)
    if user is None or not user.content.strip():
        return None
    return PreviousTurn(user.content.strip(), messages[-1].id)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


class Spawner(Protocol):
    def spawn(self, work: Coroutine[Any, Any, None]) -> Any: ...


class FeedbackWriter(Protocol):
    async def put_implicit_feedback(
        self, request: history_pb2.PutImplicitFeedbackRequest
    ) -> history_pb2.PutImplicitFeedbackResponse: ...


class ReaskSignal:
    def __init__(self, router: IntentRouter, history: FeedbackWriter, tasks: Spawner) -> None:
        self.router = router
        self.history = history
        self.tasks = tasks

    def schedule(
        self,
        user_id: str,
        conversation_id: str | None,
        match: IntentMatch | None,
        previous: PreviousTurn | None,
    ) -> None:
        """Compares and records in the background (nothing when the file turns it off, the
        message was not embedded, or there is no previous answer)."""
        threshold = self.router.routes.spec.reask_threshold
        if threshold is None or match is None or match.newest is None:
            return
        if previous is None or not conversation_id:
            return
        self.tasks.spawn(
            self.record(
                user_id, conversation_id, match.newest, previous, threshold, text=match.text
            )
        )

    async def record(
        self,
        user_id: str,
        conversation_id: str,
        newest: np.ndarray,
        previous: PreviousTurn,
        threshold: float,
        text: str = "",
    ) -> None:
        try:
            embedder = self.router.reask_embedder
            if embedder is self.router.embedder:
                rows = await embedder.embed([previous.user_text])
            else:
                rows = await embedder.embed([text, previous.user_text])
                newest = np.asarray(rows[0], dtype=np.float32)
            similarity = cosine(newest, np.asarray(rows[-1], dtype=np.float32))
            if similarity < threshold:
                INTENT_REASKS.labels("not_reask").inc()
                return
            await self.history.put_implicit_feedback(
                history_pb2.PutImplicitFeedbackRequest(
                    user_id=user_id,
                    message_id=previous.answer_id,
                    kind=REASK_KIND,
                    score=min(1.0, similarity),
                    conversation_id=conversation_id,
                )
            )
            INTENT_REASKS.labels("reask").inc()
        except Exception as exc:
            INTENT_REASKS.labels("error").inc()
            log.warning(
                "re-ask signal not recorded",
                extra={
                    "conversation_id": conversation_id,
                    "error": getattr(exc, "message", None) or repr(exc),
                },
            )
