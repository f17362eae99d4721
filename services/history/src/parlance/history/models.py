"""The history schema as SQLAlchemy models (the migrations in migrations/versions create it).

Ids are strings chosen by clients or generated ("conv_...", "msg_..."), so retried writes are
idempotent. Every table that holds a user's data carries user_id, and every query filters on it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL keeps timestamptz; SQLite has no time zones, so UTC is stored naive (a fixed
    format whose text order is time order, which cursor pagination relies on) and read back
    as aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # The conversation list: a user's conversations newest-updated first, keyset-paginated.
        Index("ix_conversations_user_updated", "user_id", "updated_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    title: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # Last activity: creation and appended messages (not renames, archiving or branch switches,
    # so the list does not reorder under the user's cursor for housekeeping).
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    archived: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # No foreign key: messages already reference conversations, and a cycle would need
    # deferred constraints on both backends. The repository only ever stores ids it checked.
    active_leaf_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        Index("ix_messages_parent", "parent_id"),
        # Both columns: the tree query filters on both (migration 0003 says why).
        Index("ix_messages_user_conversation", "user_id", "conversation_id"),
        # The intent filter of the conversation list (migration 0005).
        Index("ix_messages_user_intent", "user_id", "intent"),
        # The model report's time window over all answers (migration 0005).
        Index("ix_messages_created", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    parent_id: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("messages.id", ondelete="CASCADE"), nullable=True
    )
    user_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False, default="")
    model: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    finish_reason: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    moderation_json: Mapped[str] = mapped_column(Text, nullable=False, default="")
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # Written by the gateway's own generation (migration 0004): the export's only targets.
    generated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # User messages: the intent the gateway classified them as ("" unknown; migration 0005).
    intent: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    # Whether any verdict in moderation_json is flagged, kept on write so that the model
    # report counts flagged answers in SQL (migration 0005).
    flagged: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("message_id", "user_id", name="uq_feedback_message_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    rating: Mapped[int] = mapped_column(Integer, nullable=False)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    corrected_content: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # The moderation verdicts of comment and corrected_content (migration 0004).
    moderation_json: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class Comparison(Base):
    """A user's pick between two sibling answers (migration 0005). One row per pair of
    answers (first_message_id < second_message_id): a later pick replaces the earlier one."""

    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("first_message_id", "second_message_id", name="uq_comparisons_pair"),
        # Reading a conversation's comparisons (its page, the export, deleting it).
        Index("ix_comparisons_conversation", "conversation_id"),
        # The model report's time window.
        Index("ix_comparisons_updated", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    conversation_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    # The answers' common parent (the question).
    parent_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    first_message_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    second_message_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    chosen_message_id: Mapped[str] = mapped_column(String(128), nullable=False)
    rejected_message_id: Mapped[str] = mapped_column(String(128), nullable=False)
    chosen_model: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    rejected_model: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # When the latest pick was made.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class ImplicitFeedback(Base):
    """A weak signal on an answer, apart from ratings (migration 0005): kind "reask" when the
    user re-asked right after it, score the similarity of the two questions."""

    __tablename__ = "implicit_feedback"
    __table_args__ = (
        UniqueConstraint("message_id", "user_id", "kind", name="uq_implicit_feedback_message"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
