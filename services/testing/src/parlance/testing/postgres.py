"""A fresh PostgreSQL database for a test, on the server at PARLANCE_TEST_POSTGRES_URL
(default 127.0.0.1:5432). A missing server FAILS the tests that need it, with the reason: a
skip would let `make test` pass without ever running them. Deselect them on purpose with
`-m "not postgres"`."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import pytest

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("PARLANCE_TEST_POSTGRES_URL", DEFAULT_URL)


def _split(url: str) -> tuple[str, str]:
    """(asyncpg DSN of the URL, the URL's part before the database name)."""
    base, _, _database = url.rpartition("/")
    return base.replace("postgresql+asyncpg://", "postgresql://", 1) + "/" + _database, base


async def create_database(prefix: str = "parlance_test") -> str:
    """Creates a uniquely named database (parallel or aborted runs never collide) and returns
    its SQLAlchemy URL. Fails the test, saying why, when the server does not answer."""
    url = server_url()
    dsn, base = _split(url)
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unreachable = repr(exc)
    else:
        unreachable = ""
    if unreachable:
        pytest.fail(
            f"PostgreSQL is not reachable at {url} ({unreachable}). These tests need it: "
            "start PostgreSQL (or set PARLANCE_TEST_POSTGRES_URL), or deselect them with "
            '-m "not postgres".',
            pytrace=False,
        )
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{base}/{name}"


async def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    dsn, _ = _split(server_url())
    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def create_database_sync(prefix: str = "parlance_test") -> str:
    """create_database for code outside an event loop (sync fixtures)."""
    return asyncio.run(create_database(prefix))


def drop_database_sync(url: str) -> None:
    asyncio.run(drop_database(url))
