"""Issue 14's low findings in the chat flow: cache hits start no title generation, the engine
never sees the client's request id, a cached answer keeps its logprobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from parlance.testing.fakes import Script, wait_for
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway


def title_tasks() -> list[asyncio.Task[object]]:
    # Titles.schedule names each task title-<conversation id>.
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("title-")]


async def test_a_cache_hit_starts_no_title_generation(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, generate_titles=True) as gw:
        gw.generator.scripts = [Script(), Script(deltas=["Greeting"])]
        await gw.chat(store=True, temperature=0)

        def titles() -> list[object]:
            return [r for r in gw.generator.requests if r.request_id.startswith("title-")]

        await wait_for(lambda: len(titles()) == 1)  # the title is generated in the background
        await wait_for(lambda: not title_tasks())  # and written
        hit = await gw.chat(store=True, temperature=0)
        assert hit.headers["x-cache"] == "hit"
        # A title the hit asked for would be a task by now (scheduled before the response).
        assert not title_tasks()
        assert len(titles()) == 1
        # The hit's conversation keeps its provisional title.
        assert gw.history.conversations[hit.json()["conversation_id"]].conversation.title == (
            "Hi there"
        )


async def test_the_engine_gets_a_request_id_of_the_gateways_own(gw: InProcessGateway) -> None:
    first = await gw.chat(headers={"X-Request-ID": "client-chosen"})
    await gw.chat(headers={"X-Request-ID": "client-chosen"})
    ids = [r.request_id for r in gw.generator.requests]
    assert "client-chosen" not in ids
    assert len(set(ids)) == 2
    # The client's id stays the request's id in the answer's headers.
    assert first.headers["x-request-id"] == "client-chosen"


async def test_a_cached_answer_keeps_its_logprobs(gw: InProcessGateway) -> None:
    gw.generator.script = Script(logprobs=True)
    live = (await gw.chat(temperature=0, logprobs=True)).json()
    hit = await gw.chat(temperature=0, logprobs=True)
    assert hit.headers["x-cache"] == "hit"
    assert hit.json()["choices"][0]["logprobs"] == live["choices"][0]["logprobs"] is not None


async def test_a_replayed_stream_keeps_its_logprobs(gw: InProcessGateway) -> None:
    gw.generator.script = Script(logprobs=True)
    body = gw.body(stream=True, temperature=0, logprobs=True)
    live = await gw.events(body)
    replayed = await gw.events(body)
    assert len(gw.generator.requests) == 1

    def tokens(events: list[object]) -> list[str]:
        return [
            token["token"]
            for e in events[:-1]
            for choice in e["choices"]  # type: ignore[index]
            if choice["logprobs"]
            for token in choice["logprobs"]["content"]
        ]

    assert tokens(replayed) == tokens(live) == ["Hello", " there", ", friend."]
