"""The migrations build the schema from an empty database, programmatically and by the CLI."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from parlance.common.schema_lock import advisory_lock_key
from parlance.history.database import create_engine, ensure_sqlite_folder
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
            assert version == "0004"
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
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0004",)


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
            assert [tuple(row) for row in versions] == [("0004",)]
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
