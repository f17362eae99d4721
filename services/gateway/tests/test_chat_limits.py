"""Limits decisions of the chat route: requests and tokens per minute, concurrency, and the
settlement of the token reservation with the real usage."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from parlance.gateway.chat.limits import RequestLimits, estimate_tokens
from parlance.gateway.chat.protocol import ChatCompletionRequest
from parlance.testing.fakes import Script, wait_for
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway


async def test_rpm_refuses_past_the_limit(gw: InProcessGateway) -> None:
    caller = await gw.create_key(rpm=2)
    assert [(await gw.chat(caller=caller)).status_code for _ in range(2)] == [200, 200]
    refused = await gw.chat(caller=caller)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "limit 2 per minute" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-remaining-tokens" in refused.headers
    # Another key is not affected.
    assert (await gw.chat()).status_code == 200


async def test_an_invalid_request_counts_as_a_request_but_reserves_no_tokens(
    gw: InProcessGateway,
) -> None:
    caller = await gw.create_key(tpm=1000)
    invalid = await gw.chat(gw.body(n=100), caller=caller)
    assert invalid.status_code == 400
    assert invalid.headers["x-ratelimit-remaining-tokens"] == "1000"


async def test_a_request_larger_than_the_tpm_limit(gw: InProcessGateway) -> None:
    caller = await gw.create_key(tpm=100)
    response = await gw.chat(gw.body(max_tokens=200), caller=caller)
    assert response.status_code == 429
    assert "Request too large" in response.json()["error"]["message"]
    assert gw.generator.requests == []


async def test_tpm_refuses_while_reservations_use_it_up(gw: InProcessGateway) -> None:
    caller = await gw.create_key(tpm=600)
    gw.generator.scripts = [Script(hang_after=1)]
    hold = asyncio.Event()
    held = asyncio.create_task(
        gw.stream_until_disconnect(gw.body(stream=True, max_tokens=400), 1, caller, hold)
    )
    await wait_for(lambda: gw.generator.in_flight == 1)
    refused = await gw.chat(gw.body(max_tokens=400), caller=caller)
    assert refused.status_code == 429
    assert "Rate limit reached for tokens" in refused.json()["error"]["message"]
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < 400
    hold.set()
    await held
    # The stopped stream's reservation was settled to what it used.
    await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
    assert (await gw.chat(gw.body(max_tokens=400), caller=caller)).status_code == 200


async def test_the_reservation_is_settled_to_the_real_usage(gw: InProcessGateway) -> None:
    caller = await gw.create_key(tpm=10_000)
    response = await gw.chat(gw.body(max_tokens=2000), caller=caller)
    reserved_left = int(response.headers["x-ratelimit-remaining-tokens"])
    assert reserved_left <= 10_000 - 2000
    await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
    after = await gw.chat(gw.body(max_tokens=1), caller=caller)
    used = response.json()["usage"]["total_tokens"]
    # What is left after the second reservation: the first one's real usage, not 2000.
    assert int(after.headers["x-ratelimit-remaining-tokens"]) > 10_000 - used - 100


async def test_a_refused_request_refunds_its_reservation(gw: InProcessGateway) -> None:
    caller = await gw.create_key(tpm=10_000)
    response = await gw.chat(gw.body("badword", max_tokens=1000), caller=caller)
    assert response.status_code == 400
    await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
    after = await gw.chat(gw.body(max_tokens=1), caller=caller)
    assert int(after.headers["x-ratelimit-remaining-tokens"]) >= 10_000 - 20


async def test_concurrency_lease_per_key(gw: InProcessGateway) -> None:
    caller = await gw.create_key(max_concurrent=1)
    gw.generator.scripts = [Script(hang_after=1)]
    hold = asyncio.Event()
    first = asyncio.create_task(gw.stream_until_disconnect(gw.body(stream=True), 1, caller, hold))
    await wait_for(lambda: gw.generator.in_flight == 1)
    second = await gw.chat(caller=caller)
    assert second.status_code == 429
    assert "Too many concurrent requests" in second.json()["error"]["message"]
    hold.set()
    await first
    await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
    assert (await gw.chat(caller=caller)).status_code == 200


async def test_the_process_concurrency_limit(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, max_concurrent_requests=1) as gw:
        gw.generator.scripts = [Script(hang_after=1)]
        hold = asyncio.Event()
        first = asyncio.create_task(gw.stream_until_disconnect(gw.body(stream=True), 1, None, hold))
        await wait_for(lambda: gw.generator.in_flight == 1)
        busy = await gw.chat()
        assert busy.status_code == 503
        assert "concurrency limit" in busy.json()["error"]["message"]
        hold.set()
        await first
        assert (await gw.chat()).status_code == 200


async def test_a_request_cancelled_while_it_waits_for_a_slot_gives_its_limits_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its limits were taken, then the process's last slot went to another request before it
    got it; cancelled while it waits (client gone), it gives them back."""
    async with inprocess_gateway(tmp_path, max_concurrent_requests=1) as gw:
        caller = await gw.create_key(max_concurrent=1)
        take = RequestLimits.take
        waiting = asyncio.Event()

        async def then_busy(self: RequestLimits, headers: Any) -> None:
            await take(self, headers)
            await gw.state.slots.acquire()  # another request took the last slot meanwhile
            waiting.set()

        monkeypatch.setattr(RequestLimits, "take", then_busy)
        request = asyncio.create_task(gw.chat(caller=caller))
        await waiting.wait()
        for _ in range(5):  # into the slot wait
            await asyncio.sleep(0)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        monkeypatch.undo()
        gw.state.slots.release()
        await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
        # Before: 429, the key's one lease never given back (kept alive by its heartbeat).
        assert (await gw.chat(caller=caller)).status_code == 200


def test_the_estimate_counts_prompt_and_every_choice() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x" * 392}],
            "max_tokens": 10,
            "n": 3,
        }
    )
    assert estimate_tokens(request, 256) == 100 + 30
    request.max_tokens = None
    assert estimate_tokens(request, 256) == 100 + 3 * 256
