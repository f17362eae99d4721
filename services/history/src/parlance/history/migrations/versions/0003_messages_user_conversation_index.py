"""Index messages by (user_id, conversation_id) instead of user_id alone.

Loading a conversation's tree filters on conversation_id AND user_id. With one index on each
column and no statistics, SQLite picked ix_messages_user, so every append and every read of a
conversation scanned all of that user's messages: in a 5-minute soak with two users
(bench/load_test.py --soak), history's CPU per request doubled as the table grew. An index on
both columns matches both equalities and wins the plan on SQLite and PostgreSQL alike; with
user_id first it still serves the queries on user_id alone (export, search).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_user_conversation", "messages", ["user_id", "conversation_id"])
    op.drop_index("ix_messages_user", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_user", "messages", ["user_id"])
    op.drop_index("ix_messages_user_conversation", table_name="messages")
