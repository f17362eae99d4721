"""The migrations build the schema from an empty database, programmatically and by the CLI."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from parlance.common.schema_lock import advisory_lock_key
from parlance.history.database import create_engine, ensure_sqlite_folder
from parlance.history.main import HistorySettings, migrate
from parlance.history.migrate import alembic_config


async def test_upgrade_from_empty_database_is_repeatable(settings: HistorySettings) -> None:
    await migrate(settings)
    await migrate(settings)  # already at head: a no-op, not an error
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert {"users", "conversations", "messages", "feedback", "alembic_version"} <= tables
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            assert version == "0005"
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


async def test_upgrade_from_0004_backfills_flagged_and_adds_the_new_schema(
    settings: HistorySettings,
) -> None:
    """Migration 0005 on a database with data: messages.flagged is filled from the stored
    verdicts, intents start empty, and the comparison, implicit-feedback and report indexes
    exist."""
    engine = create_engine(settings)

    def upgrade(connection: Connection, revision: str) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, "0004")
            now = datetime.now(UTC)
            await conn.execute(
                text("INSERT INTO users (id, created_at) VALUES ('u', :now)"), {"now": now}
            )
            await conn.execute(
                text(
                    "INSERT INTO conversations (id, user_id, title, created_at, updated_at,"
                    " archived) VALUES ('c', 'u', '', :now, :now, false)"
                ),
                {"now": now},
            )
            for message_id, verdicts in [
                ("m_flagged", '{"output": {"flagged": true}}'),
                ("m_clean", '{"output": {"flagged": false}}'),
                ("m_none", ""),
                ("m_unreadable", "{not json"),
            ]:
                await conn.execute(
                    text(
                        "INSERT INTO messages (id, conversation_id, user_id, role, content,"
                        " model, prompt_tokens, completion_tokens, finish_reason,"
                        " moderation_json, created_at, generated) VALUES (:id, 'c', 'u',"
                        " 'assistant', 'x', 'm', 0, 0, 'stop', :verdicts, :now, true)"
                    ),
                    {"id": message_id, "verdicts": verdicts, "now": now},
                )
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, "head")
            rows = await conn.execute(text("SELECT id, flagged, intent FROM messages ORDER BY id"))
            assert [(r.id, bool(r.flagged), r.intent) for r in rows] == [
                ("m_clean", False, ""),
                ("m_flagged", True, ""),
                ("m_none", False, ""),
                ("m_unreadable", True, ""),
            ]
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert {"comparisons", "implicit_feedback"} <= tables
            indexes = {
                ix["name"]
                for ix in await conn.run_sync(lambda c: inspect(c).get_indexes("messages"))
            }
            assert {"ix_messages_user_intent", "ix_messages_created"} <= indexes
            if engine.dialect.name == "sqlite":
                # The intent filter of the conversation list reads through its index.
                plan = await conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT conversation_id FROM messages"
                        " WHERE user_id = 'u' AND intent = 'geo' AND role = 'user'"
                    )
                )
                details = " ".join(str(row[-1]) for row in plan)
                assert "ix_messages_user_intent" in details, details
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
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0005",)


async def test_replicas_that_start_together_all_migrate(settings: HistorySettings) -> None:
    """Four `migrate` processes on one empty database at once, as replicas starting together:
    every one succeeds and the schema is at head. On PostgreSQL the test holds the migrations'
    advisory lock until all four wait on it, so that they do run together (Python's start-up
    would otherwise stagger them) and the test fails if they do not take the lock."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTORY_")}
    env["HISTORY_DATABASE_URL"] = settings.database_url
    engine = create_engine(settings)
    try:
        async with engine.connect() as holder:
            on_postgres = engine.dialect.name == "postgresql"
            if on_postgres:
                await holder.execute(text(f"SELECT pg_advisory_lock({MIGRATIONS_LOCK})"))
            replicas = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "parlance.history.main",
                    "migrate",
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                for _ in range(4)
            ]
            if on_postgres:
                await _wait_for_lock_waiters(holder, 4)
                await holder.execute(text(f"SELECT pg_advisory_unlock({MIGRATIONS_LOCK})"))
                await holder.commit()
            outputs = await asyncio.wait_for(
                asyncio.gather(*(replica.communicate() for replica in replicas)), 120
            )
        assert [replica.returncode for replica in replicas] == [0] * 4, [o for o, _ in outputs]
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert [tuple(row) for row in versions] == [("0005",)]
    finally:
        await engine.dispose()


MIGRATIONS_LOCK = advisory_lock_key("history.migrations")


async def _wait_for_lock_waiters(conn: AsyncConnection, count: int) -> None:
    waiting = 0
    for _ in range(600):
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{waiting} of {count} migrations waited on the advisory lock")


def test_a_new_sqlite_database_is_private(tmp_path: Path) -> None:
    """Issue 14 (low): the database holds every user's conversations; it and its folder are
    created readable by the service's user only."""
    folder = tmp_path / "data"
    ensure_sqlite_folder(f"sqlite+aiosqlite:///{folder / 'history.db'}")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "history.db").stat().st_mode) == 0o600
