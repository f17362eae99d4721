"""The durable history outbox when writes fail (issue 14, findings 1 and 6), against a real
history gRPC server: nothing blocks the outbox or a conversation for good (unstorable text,
bounded attempts and age, deleted conversations, per-user quotas, bounded dead letters), and
its files are private. The basic guarantees are test_outbox.py's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from parlance.gateway.clients import HistoryClient
from parlance.gateway.outbox import HistoryOutbox
from parlance.gateway.outbox_store import OutboxStore
from parlance.history.v1 import history_pb2
from parlance.testing.history_server import (
    HistoryServer,
    exchange,
    nul_exchange,
    stored_contents,
    wait_for,
)
from parlance.testing.postgres import create_database, drop_database


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[HistoryServer]:
    server = HistoryServer(tmp_path)
    yield server
    await server.stop()


@pytest.fixture
async def client(history: HistoryServer) -> AsyncIterator[HistoryClient]:
    client = HistoryClient(f"127.0.0.1:{history.port}", timeout_s=2.0, retry_after_s=1)
    yield client
    await client.close()


# --- issue 14, findings 1 and 6: nothing blocks the outbox or a conversation for good -------


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
async def any_history(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[HistoryServer]:
    """A running history service on SQLite, then on a fresh PostgreSQL database."""
    url = await create_database("parlance_outbox") if request.param == "postgres" else None
    server = HistoryServer(tmp_path, url)
    await server.start()
    yield server
    await server.stop()
    if url is not None:
        await drop_database(url)


async def test_unstorable_text_is_dead_lettered_at_once_and_blocks_nothing(
    tmp_path: Path, any_history: HistoryServer
) -> None:
    """A U+0000 (PostgreSQL cannot store it) used to come back as "database unavailable":
    retried forever, counted toward the outbox's bound, its conversation frozen behind it."""
    client = HistoryClient(f"127.0.0.1:{any_history.port}", timeout_s=2.0, retry_after_s=1)
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"), max_items=3)
    outbox.start()
    try:
        for _ in range(5):
            assert await outbox.submit(nul_exchange("conv_poisoned")) is False
        assert outbox.depth == 0 and not outbox.full
        assert outbox.store.dead_count() == 5
        # The conversation the bad exchanges named takes the next one, and so does everyone.
        assert await outbox.submit(exchange("conv_poisoned")[0]) is True
        bob, _ = exchange("conv_bob")
        bob.user_id = "bob"
        assert await outbox.submit(bob) is True
        assert await stored_contents(client, "conv_poisoned") == ["hello", "hi there"]
        assert await stored_contents(client, "conv_bob", "bob") == ["hello", "hi there"]
    finally:
        await outbox.close()
        await client.close()


async def test_a_queued_unstorable_exchange_does_not_freeze_its_conversation(
    tmp_path: Path, any_history: HistoryServer
) -> None:
    """The same through the queue: history down when it was answered, so it waits; once
    history is back it is dead-lettered and the conversation's later exchange is written."""
    client = HistoryClient(f"127.0.0.1:{any_history.port}", timeout_s=2.0, retry_after_s=1)
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"))
    await any_history.stop()
    try:
        assert await outbox.submit(nul_exchange("conv_q")) is False
        later, _ = exchange("conv_q")
        assert await outbox.submit(later) is False
        assert outbox.depth == 2
        await any_history.start()
        outbox.start()
        await wait_for(lambda: outbox.depth == 0)
        assert outbox.store.dead_count() == 1
        assert await stored_contents(client, "conv_q") == ["hello", "hi there"]
    finally:
        await outbox.close()
        await client.close()


@pytest.mark.postgres
async def test_an_exchange_that_keeps_failing_is_dead_lettered_after_bounded_attempts(
    tmp_path: Path,
) -> None:
    """An exchange history keeps failing (here its conversation's row is locked, so each
    write runs into its deadline: a retryable error) while it takes every other write: after
    max_attempts it is dead-lettered, and the conversation's later writes go through."""
    url = await create_database("parlance_outbox")
    server = HistoryServer(tmp_path, url)
    await server.start()
    client = HistoryClient(f"127.0.0.1:{server.port}", timeout_s=0.5, retry_after_s=1)
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"), max_attempts=3)
    lock = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await outbox.submit(exchange("conv_locked")[0]) is True
        transaction = lock.transaction()
        await transaction.start()
        await lock.execute("SELECT 1 FROM conversations WHERE id = 'conv_locked' FOR UPDATE")
        stuck, _ = exchange("conv_locked", create=False)
        assert await outbox.submit(stuck) is False  # ran into the deadline: queued
        outbox.start()
        # Other conversations keep being written, so each failure of `stuck` counts.
        for i in range(20):
            await asyncio.sleep(0.3)
            await outbox.submit(exchange(f"conv_free_{i}")[0])
            if outbox.store.dead_count():
                break
        assert outbox.store.dead_count() == 1
        await transaction.rollback()
        later, _ = exchange("conv_locked", create=False)
        await wait_for(lambda: outbox.depth == 0)
        assert await outbox.submit(later) is True
        assert await stored_contents(client, "conv_locked") == ["hello", "hi there"] * 2
    finally:
        await lock.close()
        await outbox.close()
        await client.close()
        await server.stop()
        await drop_database(url)


async def test_history_down_counts_no_attempts_but_age_is_bounded(
    tmp_path: Path, history: HistoryServer, client: HistoryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real outage dead-letters nothing however often the drainer tries; an exchange older
    than max_age_s is dead-lettered when a try fails."""
    tries = 0
    append = client.append_messages

    async def counted(request: Any) -> Any:  # a spy: the real client's call, counted
        nonlocal tries
        tries += 1
        return await append(request)

    monkeypatch.setattr(client, "append_messages", counted)
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"), max_attempts=1)
    outbox.start()
    assert await outbox.submit(exchange("conv_wait")[0]) is False
    # Several drain attempts against a history that is down (max_attempts is 1).
    await wait_for(lambda: tries >= 3)
    assert outbox.depth == 1 and outbox.store.dead_count() == 0
    outbox.max_age_s = 0.0
    await wait_for(lambda: outbox.depth == 0)  # history still down: the next try ages it out
    assert outbox.store.dead_count() == 1
    await outbox.close()


async def test_an_old_exchange_is_written_once_history_is_back(
    tmp_path: Path, history: HistoryServer, client: HistoryClient
) -> None:
    """Age bounds an exchange only when a try fails: a gateway restarted on an old outbox (or
    a history back from a long outage) writes what it holds instead of dead-lettering it."""
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"), max_age_s=0.0)
    assert await outbox.submit(exchange("conv_old")[0]) is False  # history is down
    await history.start()
    # The drainer's first try must find history up: the client's channel is still in its
    # reconnect backoff (>= 1 s) after the failed submit, and a failed try with max_age 0 is
    # rightly a dead letter (a clean-clone run failed so).
    await asyncio.wait_for(client.channel.channel_ready(), 10)
    outbox.start()
    await wait_for(lambda: outbox.depth == 0)
    assert outbox.store.dead_count() == 0
    assert await stored_contents(client, "conv_old") == ["hello", "hi there"]
    await outbox.close()


async def test_an_exchange_of_a_deleted_conversation_is_dropped_not_kept(
    tmp_path: Path, history: HistoryServer, client: HistoryClient
) -> None:
    """The user deleted the conversation while its next exchange was on its way: that text
    must not outlive the conversation, not even as a dead letter."""
    await history.start()
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"))
    assert await outbox.submit(exchange("conv_gone")[0]) is True
    await client.delete_conversation(
        history_pb2.DeleteConversationRequest(user_id="alice", conversation_id="conv_gone")
    )
    assert await outbox.submit(exchange("conv_gone", create=False)[0]) is False
    assert outbox.depth == 0 and outbox.store.dead_count() == 0
    await outbox.close()


async def test_one_users_backlog_fills_only_that_users_quota(
    tmp_path: Path, client: HistoryClient
) -> None:
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"), max_items_per_user=2)
    for i in range(2):
        assert await outbox.submit(exchange(f"conv_a{i}")[0]) is False  # history is down
    assert outbox.full_for("alice") and not outbox.full_for("bob") and not outbox.full
    await outbox.close()


async def test_dead_letters_are_bounded_and_deleted_with_their_conversation(
    tmp_path: Path, any_history: HistoryServer
) -> None:
    path = tmp_path / "outbox.db"
    client = HistoryClient(f"127.0.0.1:{any_history.port}", timeout_s=2.0, retry_after_s=1)
    outbox = HistoryOutbox(client, str(path), max_dead=3)
    try:
        for i in range(5):
            await outbox.submit(nul_exchange(f"conv_dead_{i % 2}"))
        assert outbox.store.dead_count() == 3  # the newest three
        # Another user's dead letter under the same conversation id is not theirs to delete.
        await outbox.submit(nul_exchange("conv_dead_0", user="bob"))
        await outbox.forget_conversation("alice", "conv_dead_0")
        await outbox.forget_conversation("alice", "conv_dead_1")
        assert outbox.store.dead_count() == 1
    finally:
        await outbox.close()
        await client.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT payload, user_id FROM outbox_dead").fetchall()
    assert [user for _, user in rows] == ["bob"]


async def test_deleting_a_conversation_drops_its_queued_exchanges(
    tmp_path: Path, client: HistoryClient
) -> None:
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"))
    await outbox.submit(exchange("conv_gone")[0])
    await outbox.submit(exchange("conv_kept")[0])
    await outbox.forget_conversation("alice", "conv_gone")
    assert outbox.depth == 1 and not outbox.store.waiting("conv_gone")
    await outbox.close()


def test_outbox_files_are_private_and_old_files_are_upgraded(tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    OutboxStore(str(folder / "outbox.db")).close()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "outbox.db").stat().st_mode) == 0o600
    # A file of the first version: no user_id, no attempts; its rows get them on open.
    old = tmp_path / "old.db"
    request, _ = exchange("conv_old")
    with sqlite3.connect(old) as db:
        db.executescript(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT"
            " NOT NULL, payload BLOB NOT NULL, created_at REAL NOT NULL);"
            "CREATE TABLE outbox_dead (id INTEGER PRIMARY KEY, payload BLOB NOT NULL,"
            " created_at REAL NOT NULL, failed_at REAL NOT NULL, error TEXT NOT NULL);"
        )
        db.execute(
            "INSERT INTO outbox (conversation_id, payload, created_at) VALUES (?, ?, 0)",
            ("conv_old", request.SerializeToString()),
        )
    store = OutboxStore(str(old))
    assert store.users_over(1) == {"alice"}
    assert [item.attempts for item in store.heads(10)] == [0]
    store.close()
