"""Input moderation starts at admission, once the limits were taken, and runs beside the slot
wait, the context and intent routing (its round trip was the longest wait before the generator:
bench/results/ttft_c1.md); the generator is still called only after it passed. A request the
limits refuse sends safety nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parlance.gateway.chat.limits import RequestLimits
from parlance.safety.v1 import safety_pb2
from parlance.testing.inprocess import InProcessGateway


def watch_limits(monkeypatch: pytest.MonkeyPatch, gw: InProcessGateway) -> list[int]:
    """While the limits are taken, the input texts safety had been asked about so far (none:
    moderation starts once they were taken)."""
    seen: list[int] = []
    take = RequestLimits.take

    async def observed(self: RequestLimits, headers: Any) -> None:
        for _ in range(3):  # let tasks started before the limits run their first step
            await asyncio.sleep(0)
        seen.append(len(gw.safety.texts(safety_pb2.DIRECTION_INPUT)))
        await take(self, headers)

    monkeypatch.setattr(RequestLimits, "take", observed)
    return seen


async def test_input_moderation_starts_once_the_limits_are_taken(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = watch_limits(monkeypatch, gw)
    response = await gw.chat()
    assert response.status_code == 200
    assert seen == [0]
    assert gw.safety.texts(safety_pb2.DIRECTION_INPUT) == ["Hi there"]
    assert len(gw.generator.requests) == 1


async def test_input_moderation_runs_while_the_context_is_prepared(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started before the context (history, intent routing) is built, not after it."""
    seen: list[int] = []
    prepare = gw.state.chat.prepare

    async def observed(*args: Any) -> Any:
        for _ in range(3):  # let the moderation task run its first step
            await asyncio.sleep(0)
        seen.append(len(gw.safety.texts(safety_pb2.DIRECTION_INPUT)))
        return await prepare(*args)

    monkeypatch.setattr(gw.state.chat, "prepare", observed)
    assert (await gw.chat()).status_code == 200
    assert seen == [1]


async def test_a_request_the_limits_refuse_sends_safety_nothing(gw: InProcessGateway) -> None:
    caller = await gw.create_key(tpm=100)
    refused = await gw.chat(gw.body(max_tokens=200), caller=caller)
    assert refused.status_code == 429
    assert gw.safety.texts(safety_pb2.DIRECTION_INPUT) == []
    caller = await gw.create_key(rpm=1)
    assert (await gw.chat(caller=caller)).status_code == 200
    assert (await gw.chat(caller=caller)).status_code == 429
    assert gw.safety.texts(safety_pb2.DIRECTION_INPUT) == ["Hi there"]


async def test_a_flagged_input_still_generates_nothing(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = watch_limits(monkeypatch, gw)
    response = await gw.chat(gw.body("you badword"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"
    assert seen == [0]
    assert gw.generator.requests == []


async def test_a_request_the_cache_may_answer_is_moderated_after_the_lookup(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = watch_limits(monkeypatch, gw)
    await gw.chat(temperature=0)
    hit = await gw.chat(temperature=0)
    assert hit.headers["x-cache"] == "hit"
    # Not started early: the hit cost no classification.
    assert seen == [0, 1]
    assert gw.safety.texts(safety_pb2.DIRECTION_INPUT) == ["Hi there"]


async def test_a_moderation_nobody_awaits_is_cancelled(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request refused after moderation started (here: its model is unknown) stops it."""
    gw.safety.delay_s = 30.0
    started: list[asyncio.Task[Any]] = []
    start = gw.state.chat.preparer.start_moderation

    def keep(*args: Any) -> Any:
        task = start(*args)
        started.append(task)
        return task

    monkeypatch.setattr(gw.state.chat.preparer, "start_moderation", keep)
    response = await asyncio.wait_for(gw.chat(model="no-such-model"), 10)
    assert response.status_code == 404
    (task,) = started
    await asyncio.sleep(0)
    assert task.cancelled()
    assert gw.generator.requests == []
