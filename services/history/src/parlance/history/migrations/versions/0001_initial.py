"""Initial schema: users, conversations, messages (a tree), feedback and full-text search.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite: FTS5 keeps its own copy of the text. Its rows are keyed by the INTEGER PRIMARY KEY
# of messages_fts_rowids, not by messages' implicit rowid, which VACUUM may renumber.
# Control characters 1 and 2 are stripped from the indexed copy because search uses them as
# the snippet's highlight markers before it escapes the text.
_SQLITE_FTS = [
    """
    CREATE TABLE messages_fts_rowids (
        rowid INTEGER PRIMARY KEY,
        message_id VARCHAR(128) NOT NULL UNIQUE
    )
    """,
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, tokenize = 'porter unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts_rowids (message_id) VALUES (new.id);
        INSERT INTO messages_fts (rowid, content) VALUES (
            (SELECT rowid FROM messages_fts_rowids WHERE message_id = new.id),
            replace(replace(new.content, char(1), ''), char(2), '')
        );
    END
    """,
    """
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        DELETE FROM messages_fts
            WHERE rowid = (SELECT rowid FROM messages_fts_rowids WHERE message_id = old.id);
        DELETE FROM messages_fts_rowids WHERE message_id = old.id;
    END
    """,
    """
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        DELETE FROM messages_fts
            WHERE rowid = (SELECT rowid FROM messages_fts_rowids WHERE message_id = old.id);
        INSERT INTO messages_fts (rowid, content) VALUES (
            (SELECT rowid FROM messages_fts_rowids WHERE message_id = old.id),
            replace(replace(new.content, char(1), ''), char(2), '')
        );
    END
    """,
]

# PostgreSQL: an expression index; search must use the very same expression to hit it.
_POSTGRES_FTS = [
    "CREATE INDEX ix_messages_content_fts ON messages "
    "USING gin (to_tsvector('english'::regconfig, content))",
]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(128),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("active_leaf_id", sa.String(128), nullable=True),
    )
    op.create_index(
        "ix_conversations_user_updated", "conversations", ["user_id", "updated_at", "id"]
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(128), primary_key=True),
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
            nullable=True,
        ),
        sa.Column(
            "user_id",
            sa.String(128),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=False),
        sa.Column("moderation_json", sa.Text(), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("total_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_messages_conversation_created", "messages", ["conversation_id", "created_at"]
    )
    op.create_index("ix_messages_parent", "messages", ["parent_id"])
    op.create_index("ix_messages_user", "messages", ["user_id"])
    op.create_table(
        "feedback",
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
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("corrected_content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("message_id", "user_id", name="uq_feedback_message_user"),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in _SQLITE_FTS:
            op.execute(statement)
    elif dialect == "postgresql":
        for statement in _POSTGRES_FTS:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("messages_fts_update", "messages_fts_delete", "messages_fts_insert"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
        op.execute("DROP TABLE IF EXISTS messages_fts_rowids")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_messages_content_fts")
    op.drop_table("feedback")
    op.drop_table("messages")
    op.drop_table("conversations")
    op.drop_table("users")
