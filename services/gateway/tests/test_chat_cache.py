"""The response cache seen from the chat route: what is cached, and how it is replayed."""

from __future__ import annotations

from parlance.testing.fakes import Script
from parlance.testing.inprocess import InProcessGateway


async def test_a_cached_answer_is_the_same_answer_without_generating(gw: InProcessGateway) -> None:
    first = (await gw.chat(temperature=0)).json()
    second = await gw.chat(temperature=0)
    assert second.headers["x-cache"] == "hit"
    assert len(gw.generator.requests) == 1
    body = second.json()
    assert body["choices"] == first["choices"]
    assert body["usage"] == first["usage"]
    assert body["id"] != first["id"]


async def test_a_cached_answer_replays_as_a_stream_of_the_same_shape(
    gw: InProcessGateway,
) -> None:
    live = await gw.events(gw.body(stream=True, seed=3, stream_options={"include_usage": True}))
    replayed = await gw.events(gw.body(stream=True, seed=3, stream_options={"include_usage": True}))
    assert len(gw.generator.requests) == 1

    def shape(events: list[object]) -> list[object]:
        return [
            e if e == "[DONE]" else {k: v for k, v in e.items() if k not in ("id", "created")}  # type: ignore[union-attr]
            for e in events
        ]

    assert shape(replayed) == shape(live)


async def test_no_cache_bypasses_it(gw: InProcessGateway) -> None:
    await gw.chat(temperature=0)
    again = await gw.chat(temperature=0, headers={"Cache-Control": "no-cache"})
    assert again.headers["x-cache"] == "bypass"
    assert len(gw.generator.requests) == 2


async def test_the_cache_is_per_user(gw: InProcessGateway) -> None:
    await gw.chat(temperature=0)
    other = await gw.chat(temperature=0, caller=gw.bob)
    assert other.headers["x-cache"] == "miss"


async def test_a_different_request_is_a_different_entry(gw: InProcessGateway) -> None:
    await gw.chat(temperature=0)
    assert (await gw.chat(temperature=0, max_tokens=7)).headers["x-cache"] == "miss"
    assert (await gw.chat(gw.body("Other", temperature=0))).headers["x-cache"] == "miss"


async def test_moderated_and_failed_answers_are_not_cached(gw: InProcessGateway) -> None:
    gw.generator.scripts = [Script(deltas=["Hello there, this ", "badword here."])]
    assert (await gw.chat(temperature=0)).json()["choices"][0]["finish_reason"] == (
        "content_filter"
    )
    assert (await gw.chat(temperature=0)).headers["x-cache"] == "miss"
    gw.generator.scripts = [Script(fail_after=1)]
    events = await gw.events(gw.body("failing", stream=True, temperature=0))
    assert "error" in events[-2]
    assert (await gw.chat(gw.body("failing", temperature=0))).headers["x-cache"] == "miss"


async def test_a_cache_hit_costs_no_tokens(gw: InProcessGateway) -> None:
    caller = await gw.create_key(tpm=100_000)
    await gw.chat(temperature=0, caller=caller)
    hit = await gw.chat(temperature=0, max_tokens=None, caller=caller)
    assert hit.headers["x-cache"] == "hit"
