"""A safety service whose model failed to load, behind a real gateway: the gateway fails closed.

The safety service is the real one (gRPC host, the minilm backend) started on a folder that holds
no model, so its load fails and it stays up NOT_SERVING; the gateway is the real app with its
real gRPC safety client pointed at it (the generator and history are the in-process fakes:
neither may be reached). Nothing may be generated, and both chat and /v1/moderations answer an
OpenAI-shaped 503.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import httpx
import pytest

from parlance.gateway.app import Clients, create_app
from parlance.gateway.clients import SafetyClient
from parlance.safety.config import SafetySettings
from parlance.safety.main import build_host
from parlance.safety.serving import ClassifierLoadError
from parlance.testing.fakes import FakeGenerator, FakeHistory
from parlance.testing.inprocess import test_settings as gateway_settings


async def wait_for_load_failure(caplog: pytest.LogCaptureFixture, starting: asyncio.Task) -> str:
    for _ in range(600):
        failed = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
        if failed or starting.done():
            break
        await asyncio.sleep(0.05)
    assert failed, "the safety service never logged its failed load"
    return failed[0]


async def test_gateway_fails_closed_when_the_safety_model_did_not_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SafetySettings(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        shutdown_grace_s=1.0,
        classifier="minilm",
        minilm_model_path=str(tmp_path / "no-model-here"),
    )
    host = build_host(settings)
    caplog.set_level(logging.ERROR, logger="parlance.safety.serving")
    starting = asyncio.create_task(host.start())
    try:
        message = await wait_for_load_failure(caplog, starting)
        assert "stays NOT_SERVING" in message
        key = f"sk-safety-{uuid.uuid4().hex[:8]}-0123456789"
        generator, history = FakeGenerator(), FakeHistory()
        safety = SafetyClient(f"127.0.0.1:{host.port}", 5.0, 1)
        app = create_app(
            gateway_settings(tmp_path, api_keys=f"safety-{uuid.uuid4().hex[:8]}:{key}"),
            clients=Clients(generator=generator, safety=safety, history=history),  # type: ignore[arg-type]
        )
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "default", "messages": [{"role": "user", "content": "Hello there"}]}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                chat = await client.post("/v1/chat/completions", json=body, headers=headers)
                moderation = await client.post(
                    "/v1/moderations", json={"input": "Hello there"}, headers=headers
                )
        assert chat.status_code == 503, chat.text
        assert chat.json()["error"]["code"] == "service_unavailable"
        assert moderation.status_code == 503, moderation.text
        assert generator.requests == [], "nothing may be generated without moderation"
    finally:
        host.request_stop()
        with pytest.raises(ClassifierLoadError):
            await starting
        await host.stop()
