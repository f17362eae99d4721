"""Fixtures: a real database (a SQLite file, or a fresh PostgreSQL database per test) and a
real history gRPC server on a free port."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from parlance.history.main import HistorySettings, build_host
from parlance.history.v1 import history_pb2_grpc

POSTGRES_URL = os.environ.get(
    "PARLANCE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _fresh_postgres_database() -> tuple[str, str]:
    """Creates a uniquely named database, so that parallel or aborted runs never collide."""
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"PostgreSQL unreachable at PARLANCE_TEST_POSTGRES_URL ({exc!r})")
    name = f"parlance_history_test_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def _drop_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'history.db'}"
        return
    name, url = await _fresh_postgres_database()
    try:
        yield url
    finally:
        await _drop_postgres_database(name)


@pytest.fixture
def settings(database_url: str) -> HistorySettings:
    return HistorySettings(
        database_url=database_url,
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        shutdown_grace_s=0.5,
    )


@pytest.fixture
async def channel(settings: HistorySettings) -> AsyncIterator[grpc.aio.Channel]:
    host = build_host(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield channel
    finally:
        await channel.close()
        await host.stop()


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> history_pb2_grpc.HistoryServiceStub:
    return history_pb2_grpc.HistoryServiceStub(channel)
