"""The key store's schema on a real SQLite file and a real PostgreSQL database, created by many
gateways at once (replicas, or GATEWAY_WORKERS > 1, all start together)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from parlance.gateway.keystore import SqlKeyStore

POSTGRES_URL = os.environ.get(
    "PARLANCE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def _admin_connection() -> asyncpg.Connection:
    dsn = make_url(POSTGRES_URL).set(drivername="postgresql")
    try:
        return await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"PostgreSQL unreachable at PARLANCE_TEST_POSTGRES_URL ({exc!r})")


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
        return
    name = f"parlance_keys_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_gateways_that_start_together_all_create_the_schema(database_url: str) -> None:
    stores = [SqlKeyStore(database_url) for _ in range(6)]
    try:
        results = await asyncio.gather(
            *(store.create_schema() for store in stores), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        # Starting again on the existing schema is a no-op, and the schema works.
        await stores[0].create_schema()
        key, record = await stores[0].create("user-1", "laptop")
        principal = await stores[1].authenticate(key)
        assert principal is not None and principal.user_id == "user-1"
        assert record.hint.startswith(key[:16])
    finally:
        await asyncio.gather(*(store.close() for store in stores))
