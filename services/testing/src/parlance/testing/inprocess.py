"""The gateway in process: its real app (routes, dependencies, middleware, error handlers,
limits, cache, outbox) on an httpx.AsyncClient through ASGITransport, with fakes of the three
gRPC clients (parlance.testing.fakes) and the real Redis of this machine.

Redis: database GATEWAY_TEST_REDIS_DB (13 unless set) of redis://127.0.0.1:6379. Every
gateway gets users and keys of its own (a random suffix), so that limits and cache entries of
two gateways, or two test runs, never meet; the keys it made are deleted when it closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from httpx_sse import aconnect_sse

from parlance.gateway.app import Clients, create_app
from parlance.gateway.auth import KeyLimits
from parlance.gateway.config import GatewaySettings
from parlance.gateway.state import GatewayState
from parlance.testing.fakes import FAKE_MODEL, FakeGenerator, FakeHistory, FakeSafety

REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('GATEWAY_TEST_REDIS_DB', '13')}"


@dataclass
class Caller:
    user_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class InProcessGateway:
    client: httpx.AsyncClient
    app: Any
    settings: GatewaySettings
    generator: FakeGenerator
    safety: FakeSafety
    history: FakeHistory
    redis: aioredis.Redis
    alice: Caller
    bob: Caller

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    def body(self, content: str = "Hi there", **fields: Any) -> dict[str, Any]:
        """A chat request body for the fake model."""
        return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}]} | fields

    async def chat(
        self,
        body: dict[str, Any] | None = None,
        caller: Caller | None = None,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> httpx.Response:
        """POST /v1/chat/completions (the whole response, streams included). The body is
        JSON with non-ASCII escaped, so that any Python string can be sent (an unpaired
        surrogate as the JSON escape a client would send)."""
        return await self.client.post(
            "/v1/chat/completions",
            content=json.dumps(body if body is not None else self.body(**fields)).encode(),
            headers={"content-type": "application/json"}
            | (caller or self.alice).headers
            | (headers or {}),
        )

    async def events(self, body: dict[str, Any], caller: Caller | None = None) -> list[Any]:
        """A streamed answer's events through httpx-sse: JSON objects, then "[DONE]"."""
        out: list[Any] = []
        async with aconnect_sse(
            self.client,
            "POST",
            "/v1/chat/completions",
            json=body,
            headers=(caller or self.alice).headers,
        ) as source:
            assert source.response.status_code == 200, await source.response.aread()
            async for event in source.aiter_sse():
                out.append(event.data if event.data == "[DONE]" else json.loads(event.data))
        return out

    async def create_key(self, **limits: int) -> Caller:
        """A managed key of a new user with these limits (rpm, tpm, max_concurrent,
        max_tokens)."""
        user_id = f"user-{uuid.uuid4().hex[:8]}"
        key, _ = await self.state.key_store.create(user_id, "test", KeyLimits(**limits))
        return Caller(user_id, key)

    async def stream_until_disconnect(
        self,
        body: dict[str, Any],
        after_events: int,
        caller: Caller | None = None,
        hold: asyncio.Event | None = None,
    ) -> list[bytes]:
        """Streams `body` straight through the ASGI app and disconnects (as a client that
        goes away) once `after_events` SSE events arrived (and `hold` is set, when given).
        ASGITransport reads a response whole, so it cannot stop a stream midway; this speaks
        ASGI itself."""
        payload = json.dumps(body).encode()
        received: list[bytes] = []
        enough = asyncio.Event()
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await enough.wait()
            if hold is not None:
                await hold.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                received.append(message["body"])
                if sum(chunk.count(b"\n\n") for chunk in received) >= after_events:
                    enough.set()

        headers = [(b"content-type", b"application/json")] + [
            (k.lower().encode(), v.encode()) for k, v in (caller or self.alice).headers.items()
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("gateway", 80),
        }
        await asyncio.wait_for(self.app(scope, receive, send), timeout=10)
        return received


def test_settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    """Settings of an in-process gateway: files under tmp_path, the tests' Redis database,
    titles off (a test that wants them turns them on)."""
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/keys.db",
        "outbox_path": str(tmp_path / "outbox.db"),
        "generate_titles": False,
        "cache_ttl_s": 60,
        "retry_after_s": 1,
    }
    return GatewaySettings(**(values | overrides))


@asynccontextmanager
async def inprocess_gateway(
    tmp_path: Path,
    generator: FakeGenerator | None = None,
    safety: Any = None,
    **overrides: Any,
) -> AsyncIterator[InProcessGateway]:
    """A started in-process gateway (lifespan run) and its client; `overrides` are
    GatewaySettings fields; `generator`: a FakeGenerator set up before the start-up (which
    lists its models, e.g. for intent routing); `safety`: a SafetyClient of a real safety
    service instead of FakeSafety."""
    suffix = uuid.uuid4().hex[:8]
    alice = Caller(f"alice-{suffix}", f"sk-alice-{suffix}-0123456789")
    bob = Caller(f"bob-{suffix}", f"sk-bob-{suffix}-0123456789")
    settings = test_settings(
        tmp_path,
        **({"api_keys": f"{alice.user_id}:{alice.key},{bob.user_id}:{bob.key}"} | overrides),
    )
    generator = generator or FakeGenerator()
    safety, history = safety or FakeSafety(), FakeHistory()
    app = create_app(
        settings,
        clients=Clients(generator=generator, safety=safety, history=history),  # type: ignore[arg-type]
    )
    redis = aioredis.from_url(REDIS_URL)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            gateway = InProcessGateway(
                client, app, settings, generator, safety, history, redis, alice, bob
            )
            try:
                yield gateway
            finally:
                await _forget_keys(redis, gateway)
    await redis.aclose()


async def _forget_keys(redis: aioredis.Redis, gateway: InProcessGateway) -> None:
    """Deletes the Redis keys of this gateway's API keys (limits, leases); cache entries
    expire within cache_ttl_s."""
    records = await gateway.state.key_store.list(None, True)
    key_ids = [record.id for record in records] + [
        p.key_id
        for c in (gateway.alice, gateway.bob)
        if (p := await gateway.state.keys.authenticate(c.key)) is not None
    ]
    for key_id in key_ids:
        async for name in redis.scan_iter(match=f"*{key_id}*"):
            await redis.delete(name)
