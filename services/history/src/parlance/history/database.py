"""The async engine: SQLite (embedded default) or PostgreSQL, chosen by the URL."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from parlance.history.config import HistorySettings


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def ensure_sqlite_folder(url: str | URL) -> None:
    """SQLite creates the file but not its folder (.data/ on a fresh checkout). Both are
    created readable by this user only (the file holds every user's conversations); SQLite
    gives its -wal and -shm files the main file's permissions."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database).expanduser()
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling starts transactions lazily and never for DDL;
    # switched off here, _sqlite_on_begin below decides (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Cascades and parent checks need foreign keys, which SQLite leaves off per connection;
    # WAL lets readers run beside the writer; busy_timeout waits for the write lock instead of
    # failing at once when two requests write together.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front. A deferred transaction that read and then
    # writes fails with SQLITE_BUSY when another writer committed meanwhile (busy_timeout
    # cannot help there), which concurrent appends would hit. It also makes migrations atomic.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(settings: HistorySettings) -> AsyncEngine:
    url = settings.database_url
    kwargs: dict[str, Any] = {"echo": settings.db_echo}
    if is_sqlite(url):
        ensure_sqlite_folder(url)
    else:
        kwargs.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_pre_ping=True,
        )
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit off: records are read after the transaction ends.
    return async_sessionmaker(engine, expire_on_commit=False)


async def check_database(engine: AsyncEngine) -> None:
    """Raises when the database is unreachable (a start-up and readiness check)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
