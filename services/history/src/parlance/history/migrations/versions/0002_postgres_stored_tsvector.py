"""PostgreSQL search: a stored tsvector column instead of an expression index.

Ranking with the expression index re-parsed every matching message (to_tsvector per row) on
each search: 1.4 s for two common words over 100k messages (bench/history_bench.py). A
generated, stored column is parsed once, on write. SQLite (FTS5) is unchanged.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE messages ADD COLUMN content_tsv tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED"
    )
    op.execute("CREATE INDEX ix_messages_content_tsv ON messages USING gin (content_tsv)")
    op.execute("DROP INDEX IF EXISTS ix_messages_content_fts")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX ix_messages_content_fts ON messages "
        "USING gin (to_tsvector('english'::regconfig, content))"
    )
    op.execute("DROP INDEX IF EXISTS ix_messages_content_tsv")
    op.execute("ALTER TABLE messages DROP COLUMN content_tsv")
