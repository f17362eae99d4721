"""The durable history outbox against a real history gRPC server (SQLite) on a real port.

What it must guarantee: an exchange is either in history or on disk; order is kept; a full
outbox refuses new work instead of dropping old; one drainer at a time across processes.
What keeps anything from blocking it for good is test_outbox_failures.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

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


async def test_writes_directly_while_history_is_up(
    tmp_path: Path, history: HistoryServer, client: HistoryClient
) -> None:
    await history.start()
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"))
    outbox.start()
    request, _ = exchange("conv_up")
    assert await outbox.submit(request) is True
    assert outbox.depth == 0
    assert await stored_contents(client, "conv_up") == ["hello", "hi there"]
    await outbox.close()


async def test_survives_a_restart_and_keeps_order(
    tmp_path: Path, history: HistoryServer, client: HistoryClient
) -> None:
    """History down: two exchanges of one conversation wait on disk. The process "dies"
    (a new outbox opens the same file), history comes back, both land, in order."""
    path = str(tmp_path / "outbox.db")
    first = HistoryOutbox(client, path)
    first.start()
    request1, answer1 = exchange("conv_down")
    request2, _ = exchange("conv_down", parent_id=answer1, create=False)
    assert await first.submit(request1) is False
    # Something older waits, so the second is queued even if history were back.
    assert await first.submit(request2) is False
    assert first.depth == 2
    # No close(): a killed process does not flush. Its lease lapses; a new process takes over.
    assert first._task is not None
    first._task.cancel()

    second = HistoryOutbox(client, path)
    second.LEASE_S = 0.5
    second.start()
    assert second.depth == 2
    await history.start()
    await wait_for(lambda: second.depth == 0)
    conversation = await client.get_conversation(
        history_pb2.GetConversationRequest(user_id="alice", conversation_id="conv_down")
    )
    assert [m.content for m in conversation.messages] == ["hello", "hi there"] * 2
    assert conversation.messages[2].parent_id == answer1
    await second.close()


async def test_full_outbox_refuses_nothing_already_queued(
    tmp_path: Path, history: HistoryServer, client: HistoryClient
) -> None:
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"), max_items=2)
    outbox.start()
    for i in range(3):
        assert await outbox.submit(exchange(f"conv_full_{i}")[0]) is False
    # Full is a signal to refuse new requests (the chat service does); the third exchange,
    # already answered, is kept all the same.
    assert outbox.full and outbox.depth == 3
    await history.start()
    await wait_for(lambda: outbox.depth == 0)
    assert not outbox.full
    for i in range(3):
        assert await stored_contents(client, f"conv_full_{i}") == ["hello", "hi there"]
    await outbox.close()


async def test_a_refused_exchange_is_dead_lettered_and_does_not_block_the_queue(
    tmp_path: Path, history: HistoryServer, client: HistoryClient
) -> None:
    outbox = HistoryOutbox(client, str(tmp_path / "outbox.db"))
    outbox.start()
    # Text history cannot store (U+0000): it refuses it with INVALID_ARGUMENT once it is up.
    # (A conversation deleted meanwhile, NOT_FOUND, is dropped instead: see below.)
    orphan = nul_exchange("conv_refused")
    good, _ = exchange("conv_good")
    assert await outbox.submit(orphan) is False
    assert await outbox.submit(good) is False
    await history.start()
    await wait_for(lambda: outbox.depth == 0)
    assert await stored_contents(client, "conv_good") == ["hello", "hi there"]
    assert outbox.store.dead_count() == 1
    await outbox.close()


def test_one_drainer_at_a_time(tmp_path: Path) -> None:
    """Worker processes share the file; the lease elects one drainer, and hands over when its
    holder stops renewing it (killed) or resigns (stopped)."""
    path = str(tmp_path / "outbox.db")
    a, b = OutboxStore(path), OutboxStore(path)
    assert a.lead("a", ttl_s=30)
    assert not b.lead("b", ttl_s=30)
    assert a.lead("a", ttl_s=30)  # renewal
    a.resign("a")
    assert b.lead("b", ttl_s=0.01)
    import time

    time.sleep(0.05)
    assert a.lead("a", ttl_s=30)  # b's lease lapsed
    a.close()
    b.close()


async def test_only_the_waiting_conversation_queues(
    tmp_path: Path, history: HistoryServer, client: HistoryClient
) -> None:
    """With history back, an exchange queues only behind its own conversation's; the others
    are written directly (one serial queue fell behind for good under load)."""
    path = str(tmp_path / "outbox.db")
    down = HistoryOutbox(client, path)
    first, answer1 = exchange("conv_waiting")
    assert await down.submit(first) is False  # history down: queued
    await history.start()
    for _ in range(100):  # the channel reconnects after its back-off
        if await client.check_health():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("history did not come back")
    # Another process on the same file, history up, its drainer not started yet.
    other = HistoryOutbox(client, path)
    follow_up, _ = exchange("conv_waiting", parent_id=answer1, create=False)
    assert await other.submit(follow_up) is False  # behind its conversation's first exchange
    assert await other.submit(exchange("conv_other")[0]) is True  # written at once
    other.start()
    await wait_for(lambda: other.depth == 0)
    assert await stored_contents(client, "conv_waiting") == ["hello", "hi there"] * 2
    await other.close()
