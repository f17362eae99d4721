"""Input moderation starts at admission, once the request is valid, and runs beside the limits'
Redis script and the context (its round trip was the longest wait before the generator:
bench/results/ttft_c1.md); the generator is still called only after it passed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parlance.gateway.chat.limits import RequestLimits
from parlance.safety.v1 import safety_pb2
from parlance.testing.inprocess import InProcessGateway


def watch_limits(monkeypatch: pytest.MonkeyPatch, gw: InProcessGateway) -> list[int]:
    """While the limits are taken, the input texts safety had been asked about so far."""
    seen: list[int] = []
    take = RequestLimits.take

    async def observed(self: RequestLimits, headers: Any) -> None:
        for _ in range(3):  # let tasks started before the limits run their first step
            await asyncio.sleep(0)
        seen.append(len(gw.safety.texts(safety_pb2.DIRECTION_INPUT)))
        await take(self, headers)

    monkeypatch.setattr(RequestLimits, "take", observed)
    return seen


async def test_input_moderation_runs_while_the_limits_are_taken(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = watch_limits(monkeypatch, gw)
    response = await gw.chat()
    assert response.status_code == 200
    assert seen == [1]
    assert gw.safety.texts(safety_pb2.DIRECTION_INPUT) == ["Hi there"]
    assert len(gw.generator.requests) == 1


async def test_a_flagged_input_still_generates_nothing(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = watch_limits(monkeypatch, gw)
    response = await gw.chat(gw.body("you badword"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"
    assert seen == [1]
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
