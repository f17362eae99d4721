"""The gateway's generator pool in process, over real gRPC generator servers (scripted engine):
a call whose target turns out dead before any work started there goes to another replica,
also in the window where the routing table has not yet seen the death (its health watch is
held back here, which is the only thing this test stages); with no replica left it is a 503.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from parlance.gateway import errors
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.models import ModelRegistry
from parlance.generator.config import GeneratorSettings
from parlance.generator.main import create_host
from parlance.generator.v1 import generator_pb2 as pb

MODEL = "chat-small"


async def start_generator(text: str) -> tuple[object, int]:
    settings = GeneratorSettings(
        port=0,
        metrics_port=-1,
        shutdown_grace_s=0.5,
        models=json.dumps(
            [
                {
                    "id": MODEL,
                    "engine": "scripted",
                    "settings": {"scripted_text": text, "scripted_tokens_per_s": 0},
                }
            ]
        ),
    )
    host, _ = create_host(settings)
    await host.start()
    return host, host.port


def chat_request() -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=MODEL, chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="hi")])
    )


async def answer(pool: GeneratorClient) -> str:
    return "".join([d.text async for r in pool.generate(chat_request()) for d in r.choices])


@pytest_asyncio.fixture
async def replicas() -> AsyncIterator[tuple[GeneratorClient, list[object]]]:
    one, one_port = await start_generator("one")
    two, two_port = await start_generator("two")
    pool = GeneratorClient(f"127.0.0.1:{one_port},127.0.0.1:{two_port}", 10.0, 2)
    await pool.wait_listed(5.0)
    for _ in range(100):  # both watches report SERVING
        if all(t.serving for t in pool.targets):
            break
        await asyncio.sleep(0.05)
    yield pool, [one, two]
    await pool.close()
    for host in (one, two):
        await host.stop()  # type: ignore[attr-defined]


async def test_calls_go_to_the_live_replica_while_the_table_is_stale(replicas) -> None:  # type: ignore[no-untyped-def]
    pool, hosts = replicas
    assert {await answer(pool) for _ in range(4)} == {"one", "two"}
    # Replica two dies; the health watches are held back, so the table still lists it as
    # SERVING: exactly the window between a crash and the watch noticing it.
    for task in pool._tasks:
        task.cancel()
    await asyncio.gather(*pool._tasks, return_exceptions=True)
    await hosts[1].server.stop(0)  # type: ignore[attr-defined]
    assert all(t.serving for t in pool.targets)
    assert [await answer(pool) for _ in range(6)] == ["one"] * 6
    counted = await pool.count_tokens(pb.CountTokensRequest(model=MODEL, chat=chat_request().chat))
    assert counted.token_count > 0
    # Replica one dies too: nothing is left to take the call.
    await hosts[0].server.stop(0)  # type: ignore[attr-defined]
    with pytest.raises(errors.APIError) as info:
        await answer(pool)
    assert info.value.status == 503


async def test_registry_resolves_through_the_pool(replicas) -> None:  # type: ignore[no-untyped-def]
    pool, _ = replicas
    registry = ModelRegistry(pool, {"fast": MODEL})
    assert await registry.resolve("fast") == MODEL
    assert await registry.resolve("CHAT-SMALL") == MODEL
    assert await registry.resolve("default") == MODEL
    with pytest.raises(errors.APIError) as info:
        await registry.resolve(MODEL, task="embed")
    assert info.value.status == 400 and info.value.code == "model_task_mismatch"
    with pytest.raises(errors.APIError) as missing:
        await registry.resolve("gpt-9")
    assert missing.value.status == 404 and missing.value.code == "model_not_found"
    cards = await registry.cards()
    assert [c["id"] for c in cards] == ["fast", MODEL]
    assert cards[0]["alias_for"] == MODEL and cards[1]["task"] == "chat"
    assert registry.status() == {MODEL: {"task": "chat", "targets": 2, "serving": 2}}
