"""Intents on user messages, comparisons, implicit feedback and the model report's indexes.

- messages.intent: the intent the gateway classified a user message as ("" unknown), with an
  index on (user_id, intent) for the conversation list's intent filter (issue 18).
- messages.flagged: whether any moderation verdict of the message is flagged, kept on write so
  that the model report counts flagged answers in SQL on both backends (JSON functions differ);
  rows from before are backfilled here from their moderation_json.
- comparisons: a user's pick between two sibling answers, one row per pair (issue 16).
- implicit_feedback: weak signals apart from ratings, e.g. a re-asked question (issue 18).
- ix_messages_created: the model report's time window over every answer (issue 17).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None

_BACKFILL_BATCH = 1000


def _flagged(moderation_json: str) -> bool:
    """A frozen copy of export.is_flagged (a migration must not change when the code does):
    any verdict flagged, at any depth; unreadable JSON counts as flagged."""
    try:
        stack: list[Any] = [json.loads(moderation_json)]
    except ValueError:
        return True
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("flagged") is True:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _backfill_flagged() -> None:
    bind = op.get_bind()
    messages = sa.table(
        "messages",
        sa.column("id", sa.String),
        sa.column("moderation_json", sa.Text),
        sa.column("flagged", sa.Boolean),
    )
    after = ""
    while True:
        rows = bind.execute(
            sa.select(messages.c.id, messages.c.moderation_json)
            .where(messages.c.moderation_json != "", messages.c.id > after)
            .order_by(messages.c.id)
            .limit(_BACKFILL_BATCH)
        ).all()
        flagged = [row.id for row in rows if _flagged(row.moderation_json)]
        if flagged:
            bind.execute(sa.update(messages).where(messages.c.id.in_(flagged)).values(flagged=True))
        if len(rows) < _BACKFILL_BATCH:
            return
        after = rows[-1].id


def upgrade() -> None:
    # Plain ADD COLUMNs with constant defaults (SQLite takes them without rebuilding the table,
    # so the search triggers stay as they are).
    op.add_column("messages", sa.Column("intent", sa.String(64), nullable=False, server_default=""))
    op.add_column(
        "messages",
        sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_messages_user_intent", "messages", ["user_id", "intent"])
    op.create_index("ix_messages_created", "messages", ["created_at"])
    _backfill_flagged()
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "user_id",
            sa.String(128),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "conversation_id",
            sa.String(128),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "parent_id",
            sa.String(128),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "first_message_id",
            sa.String(128),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "second_message_id",
            sa.String(128),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("chosen_message_id", sa.String(128), nullable=False),
        sa.Column("rejected_message_id", sa.String(128), nullable=False),
        sa.Column("chosen_model", sa.String(256), nullable=False, server_default=""),
        sa.Column("rejected_model", sa.String(256), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("first_message_id", "second_message_id", name="uq_comparisons_pair"),
    )
    op.create_index("ix_comparisons_conversation", "comparisons", ["conversation_id"])
    op.create_index("ix_comparisons_updated", "comparisons", ["updated_at"])
    op.create_table(
        "implicit_feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "message_id",
            sa.String(128),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "user_id",
            sa.String(128),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("message_id", "user_id", "kind", name="uq_implicit_feedback_message"),
    )


def downgrade() -> None:
    op.drop_table("implicit_feedback")
    op.drop_index("ix_comparisons_updated", table_name="comparisons")
    op.drop_index("ix_comparisons_conversation", table_name="comparisons")
    op.drop_table("comparisons")
    op.drop_index("ix_messages_created", table_name="messages")
    op.drop_index("ix_messages_user_intent", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("flagged")
        batch.drop_column("intent")
