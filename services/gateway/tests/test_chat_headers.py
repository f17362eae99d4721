"""The headers of a chat answer: request id, Server-Timing, x-cache, rate-limit headers."""

from __future__ import annotations

import re
from pathlib import Path

from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

RATE_HEADERS = [
    f"x-ratelimit-{field}-{kind}"
    for kind in ("requests", "tokens")
    for field in ("limit", "remaining", "reset")
]


async def test_the_request_id_is_echoed_or_made(gw: InProcessGateway) -> None:
    echoed = await gw.chat(headers={"X-Request-ID": "client-id-1"})
    assert echoed.headers["x-request-id"] == "client-id-1"
    made = await gw.chat()
    assert re.fullmatch(r"[0-9a-f-]{8,}", made.headers["x-request-id"])


async def test_server_timing_names_each_stage(gw: InProcessGateway) -> None:
    response = await gw.chat()
    stages = [part.split(";")[0] for part in response.headers["server-timing"].split(", ")]
    assert stages == ["auth", "limits", "context", "moderation", "generation"]
    assert all(
        re.search(r";dur=\d+\.\d\d$", p) for p in response.headers["server-timing"].split(", ")
    )


async def test_server_timing_of_a_stream_ends_at_the_first_message(gw: InProcessGateway) -> None:
    response = await gw.chat(stream=True)
    stages = [part.split(";")[0] for part in response.headers["server-timing"].split(", ")]
    assert stages == ["auth", "limits", "context", "moderation", "generator"]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


async def test_deterministic_requests_say_whether_the_cache_answered(
    gw: InProcessGateway,
) -> None:
    random = await gw.chat()
    assert random.headers["x-cache"] == "bypass"
    miss = await gw.chat(temperature=0)
    assert miss.headers["x-cache"] == "miss"
    hit = await gw.chat(temperature=0)
    assert hit.headers["x-cache"] == "hit"
    stages = [part.split(";")[0] for part in hit.headers["server-timing"].split(", ")]
    assert stages == ["auth", "limits", "context", "cache"]


async def test_answers_carry_the_rate_limit_headers(gw: InProcessGateway) -> None:
    for response in (await gw.chat(), await gw.chat(stream=True)):
        for name in RATE_HEADERS:
            assert name in response.headers, name
        assert response.headers["x-ratelimit-limit-requests"] == "600"
        assert response.headers["x-ratelimit-limit-tokens"] == "200000"


async def test_errors_after_authentication_carry_them_too(gw: InProcessGateway) -> None:
    invalid = await gw.chat(n=100)
    schema = await gw.chat(temperature=9)
    unknown_model = await gw.chat(model="nope")
    for response in (invalid, unknown_model):
        for name in RATE_HEADERS:
            assert name in response.headers, (response.status_code, name)
    # A body the schema refuses was never validated by the flow: requests headers only.
    assert schema.status_code == 400
    assert "x-ratelimit-remaining-requests" in schema.headers


async def test_an_unauthenticated_error_has_no_rate_limit_headers(gw: InProcessGateway) -> None:
    response = await gw.client.post("/v1/chat/completions", json=gw.body())
    assert response.status_code == 401
    assert not any(name.startswith("x-ratelimit") for name in response.headers)


async def test_remaining_requests_count_down(tmp_path: Path) -> None:
    # 6 a minute: at the default 600 a request comes back every 100 ms, which a loaded machine
    # can spend between the two requests (the count then stays put and the test failed).
    async with inprocess_gateway(tmp_path, rpm_limit=6) as gw:
        first = int((await gw.chat()).headers["x-ratelimit-remaining-requests"])
        second = int((await gw.chat()).headers["x-ratelimit-remaining-requests"])
    assert second == first - 1
