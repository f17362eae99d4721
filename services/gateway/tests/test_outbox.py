"""The durable history outbox against a real history gRPC server (SQLite) on a real port.

What it must guarantee: an exchange is either in history or on disk; order is kept; a full
outbox refuses new work instead of dropping old; one drainer at a time across processes.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parlance.gateway.clients import HistoryClient
from parlance.gateway.outbox import HistoryOutbox, OutboxStore
from parlance.history.main import HistorySettings, build_host
from parlance.history.v1 import history_pb2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HistoryServer:
    """A real history service on a fixed port that the test can stop and start again."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.settings = HistorySettings(
            database_url=f"sqlite+aiosqlite:///{tmp / 'history.db'}",
            host="127.0.0.1",
            port=self.port,
            metrics_port=-1,
            shutdown_grace_s=0.2,
        )
        self.host = None

    async def start(self) -> None:
        self.host = build_host(self.settings)
        await self.host.start()

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
            self.host = None


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


def exchange(
    conversation_id: str, parent_id: str | None = None, create: bool = True
) -> tuple[history_pb2.AppendMessagesRequest, str]:
    """A user message and its answer; returns the request and the answer's id."""
    user = history_pb2.Message(id=f"msg_{uuid.uuid4().hex}", role="user", content="hello")
    if parent_id is not None:
        user.parent_id = parent_id
    answer_id = f"msg_{uuid.uuid4().hex}"
    answer = history_pb2.Message(id=answer_id, role="assistant", content="hi there")
    request = history_pb2.AppendMessagesRequest(
        user_id="alice",
        conversation_id=conversation_id,
        messages=[user, answer],
        create_if_missing=create,
        title="greeting",
    )
    return request, answer_id


async def stored_contents(client: HistoryClient, conversation_id: str) -> list[str]:
    reply = await client.get_conversation(
        history_pb2.GetConversationRequest(user_id="alice", conversation_id=conversation_id)
    )
    return [m.content for m in reply.messages]


async def wait_for(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


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
    # Appending to a conversation that does not exist (and may not be created): history will
    # refuse it with NOT_FOUND once it is up.
    orphan, _ = exchange("conv_missing", create=False)
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
