"""The history service's domain records, independent of protobuf and of the ORM."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

ROLES = frozenset({"system", "user", "assistant"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_conversation_id() -> str:
    return "conv_" + uuid.uuid4().hex


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: str
    user_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    archived: bool
    active_leaf_id: str | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as a client sends it to AppendMessages (ids and parents may be empty)."""

    id: str
    # None: after the previous message of the batch (or the active leaf); "": a new root.
    parent_id: str | None
    role: str
    content: str
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    moderation_json: str = ""
    ttft_ms: int | None = None
    total_ms: int | None = None
    # An assistant message the gateway generated (not text a client wrote as "assistant"):
    # only these are training targets.
    generated: bool = False
    # User messages: the intent the gateway classified them as ("" unknown).
    intent: str = ""


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    conversation_id: str
    parent_id: str | None
    user_id: str
    role: str
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    moderation_json: str
    ttft_ms: int | None
    total_ms: int | None
    created_at: datetime
    generated: bool = False
    intent: str = ""
    # Whether any of its moderation verdicts is flagged (kept for the model report).
    flagged: bool = False


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    rating: int
    comment: str
    corrected_content: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MessageView:
    """A stored message as the caller sees it: its place among its siblings and their rating."""

    message: MessageRecord
    # The messages sharing its parent (itself included), in creation order.
    sibling_ids: tuple[str, ...]
    rating: int
    feedback: FeedbackRecord | None = None
    # The caller's latest comparison this answer was a side of.
    comparison: ComparisonRecord | None = None

    @property
    def sibling_count(self) -> int:
        return len(self.sibling_ids)

    @property
    def sibling_index(self) -> int:
        """1-based place among its siblings."""
        return self.sibling_ids.index(self.message.id) + 1


@dataclass(frozen=True, slots=True)
class TreeNode:
    """The part of a message the tree needs: who its parent is and when it was written."""

    id: str
    parent_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationUpdate:
    title: str | None = None
    archived: bool | None = None
    active_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    message_id: str
    rating: int
    comment: str = ""
    corrected_content: str = ""
    # When set, the message must belong to this conversation.
    conversation_id: str | None = None
    # The moderation verdicts of comment and corrected_content (JSON), classified by the
    # gateway on submission.
    moderation_json: str = ""


@dataclass(frozen=True, slots=True)
class SearchHitRecord:
    conversation_id: str
    conversation_title: str
    message_id: str
    role: str
    # Already HTML-safe: escaped text with <mark> around the matches.
    snippet: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationPage:
    conversations: list[ConversationRecord]
    next_cursor: str
    # The distinct intents of each listed conversation's user messages.
    intents: dict[str, tuple[str, ...]] = field(default_factory=dict)


EXPORT_KINDS = frozenset({"all", "sft", "preference"})


@dataclass(frozen=True, slots=True)
class ExportFilter:
    kind: str = "all"
    since: datetime | None = None
    until: datetime | None = None
    model: str = ""
    # Only records whose prompt's last user message has this intent ("" every intent).
    intent: str = ""
    # Also the implicit feedback, as weak-negative rows.
    include_implicit: bool = False


@dataclass(frozen=True, slots=True)
class ExportMessage:
    """A message as the export reads it, with its owner's feedback (if any)."""

    id: str
    parent_id: str | None
    role: str
    content: str
    model: str
    moderation_json: str
    created_at: datetime
    rating: int = 0
    corrected_content: str = ""
    finish_reason: str = ""
    generated: bool = False
    # The verdicts of the owner's feedback text (comment, corrected_content).
    feedback_moderation_json: str = ""
    intent: str = ""


@dataclass(frozen=True, slots=True)
class ComparisonRecord:
    """The latest pick between two sibling answers."""

    conversation_id: str
    parent_id: str
    chosen_message_id: str
    rejected_message_id: str
    chosen_model: str
    rejected_model: str
    created_at: datetime
    updated_at: datetime

    def peer_of(self, message_id: str) -> str:
        if message_id == self.chosen_message_id:
            return self.rejected_message_id
        return self.chosen_message_id


@dataclass(frozen=True, slots=True)
class ImplicitFeedback:
    message_id: str
    kind: str
    score: float
    # When set, the message must belong to this conversation.
    conversation_id: str | None = None


@dataclass(frozen=True, slots=True)
class ImplicitSignal:
    """Implicit feedback as the export reads it."""

    message_id: str
    kind: str
    score: float


@dataclass(frozen=True, slots=True)
class ReportFilter:
    since: datetime | None = None
    until: datetime | None = None
    intent: str = ""


@dataclass(frozen=True, slots=True)
class ModelCounts:
    model: str
    answers: int
    rated_answers: int
    thumbs_up: int
    thumbs_down: int
    flagged_answers: int
    reasked_answers: int


@dataclass(frozen=True, slots=True)
class ComparisonCount:
    chosen_model: str
    rejected_model: str
    count: int


@dataclass(frozen=True, slots=True)
class ModelReport:
    models: list[ModelCounts]
    comparisons: list[ComparisonCount]
