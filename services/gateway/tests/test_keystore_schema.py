"""The key store's schema on a real SQLite file and a real PostgreSQL database, created by many
gateways at once (replicas, or GATEWAY_WORKERS > 1, all start together)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parlance.gateway.keystore import SqlKeyStore
from parlance.testing.postgres import create_database, drop_database


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
    # A missing PostgreSQL fails this test with the reason; it never skips it.
    url = await create_database("parlance_keys_test")
    try:
        yield url
    finally:
        await drop_database(url)


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
