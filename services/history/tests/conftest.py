"""Fixtures: a real database (a SQLite file, or a fresh PostgreSQL database per test, from
parlance.testing) and a real history gRPC server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parlance.history.main import HistorySettings, build_host
from parlance.history.v1 import history_pb2_grpc
from parlance.testing.postgres import create_database, drop_database


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
    # A missing PostgreSQL fails these tests with the reason; it never skips them.
    url = await create_database("parlance_history_test")
    try:
        yield url
    finally:
        await drop_database(url)


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
