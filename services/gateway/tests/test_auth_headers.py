"""The bearer key the middleware checks is the one the routes use: with two Authorization
headers both take the first (Starlette's choice), so a guess sent beside a valid key is still
a failed authentication, counted by the throttle."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from parlance.testing.inprocess import inprocess_gateway


async def test_a_guess_beside_a_valid_key_is_throttled(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, auth_failures_per_minute=2) as gw:
        address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
        transport = httpx.ASGITransport(app=gw.app, client=(address, 4321))
        headers = [
            ("authorization", "Bearer sk-parlance-guess-0123456789"),
            ("authorization", gw.alice.headers["Authorization"]),
            ("content-type", "application/json"),
        ]
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                statuses = [
                    (
                        await client.post("/v1/chat/completions", json=gw.body(), headers=headers)
                    ).status_code
                    for _ in range(4)
                ]
        finally:
            async for name in gw.redis.scan_iter(match=f"*{address}*"):
                await gw.redis.delete(name)
    assert statuses[:2] == [401, 401]
    assert statuses[-1] == 429
