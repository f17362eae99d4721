"""A real history gRPC service in the test's own process (history's build_host), on a port of
its own, that a test stops and starts again; and the exchanges the gateway's durable outbox
writes to it. Shared by the outbox tests (services/gateway/tests/test_outbox*.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

from parlance.common.grpc_server import GrpcServiceHost
from parlance.gateway.clients import HistoryClient
from parlance.history.main import HistorySettings, build_host
from parlance.history.v1 import history_pb2
from parlance.testing import free_port


class HistoryServer:
    """A real history service on a fixed port that the test can stop and start again."""

    def __init__(self, tmp: Path, database_url: str | None = None) -> None:
        self.port = free_port()
        self.database_url = database_url or f"sqlite+aiosqlite:///{tmp / 'history.db'}"
        self.settings = HistorySettings(
            database_url=self.database_url,
            host="127.0.0.1",
            port=self.port,
            metrics_port=-1,
            shutdown_grace_s=0.2,
        )
        self.host: GrpcServiceHost | None = None

    async def start(self) -> None:
        self.host = build_host(self.settings)
        await self.host.start()

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
            self.host = None


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


async def stored_contents(
    client: HistoryClient, conversation_id: str, user_id: str = "alice"
) -> list[str]:
    reply = await client.get_conversation(
        history_pb2.GetConversationRequest(user_id=user_id, conversation_id=conversation_id)
    )
    return [m.content for m in reply.messages]


def nul_exchange(conversation_id: str, user: str = "alice") -> history_pb2.AppendMessagesRequest:
    request, _ = exchange(conversation_id)
    request.user_id = user
    request.messages[0].content = "poison \x00 byte"
    return request


async def wait_for(predicate: Callable[[], object], timeout_s: float = 20.0) -> None:
    """As fakes.wait_for, with the longer deadline of a real server on a loaded machine."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
