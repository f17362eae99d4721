"""The migrations build the schema from an empty database, programmatically and by the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect, text

from parlance.history.database import create_engine
from parlance.history.main import HistorySettings, migrate


async def test_upgrade_from_empty_database_is_repeatable(settings: HistorySettings) -> None:
    await migrate(settings)
    await migrate(settings)  # already at head: a no-op, not an error
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert {"users", "conversations", "messages", "feedback", "alembic_version"} <= tables
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            assert version == "0003"
            indexes = {
                ix["name"]
                for ix in await conn.run_sync(lambda c: inspect(c).get_indexes("messages"))
            }
            assert "ix_messages_parent" in indexes
            assert "ix_messages_user_conversation" in indexes
            assert "ix_messages_user" not in indexes
            if engine.dialect.name == "sqlite":
                # The tree of one conversation is read through the index on both columns,
                # not by scanning all of the user's messages.
                plan = await conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT id, parent_id, created_at FROM messages"
                        " WHERE conversation_id = 'c' AND user_id = 'u'"
                    )
                )
                details = " ".join(str(row[-1]) for row in plan)
                assert "ix_messages_user_conversation (user_id=? AND conversation_id=?)" in (
                    details
                ), details
            if engine.dialect.name == "sqlite":
                assert "messages_fts" in tables
                triggers = set(
                    await conn.scalars(text("SELECT name FROM sqlite_master WHERE type='trigger'"))
                )
                assert {"messages_fts_insert", "messages_fts_delete"} <= triggers
            else:
                assert "ix_messages_content_tsv" in indexes
    finally:
        await engine.dispose()


def test_migrate_subcommand_with_database_url_alias(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "history.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTORY_")}
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{db}"
    subprocess.run(
        [sys.executable, "-m", "parlance.history.main", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0003",)
