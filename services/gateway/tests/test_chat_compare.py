"""Side-by-side comparisons (chat/compare.py): who gets two answers, the stream's shape, what is
stored, and that a candidate output moderation flags is never offered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from parlance.generator.v1 import generator_pb2
from parlance.testing.fakes import FakeGenerator, Script, wait_for
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

SHOWN = "parlance_gateway_comparisons_shown_total"
WITHHELD = "parlance_gateway_comparison_candidates_withheld_total"
ANSWERED = "parlance_gateway_comparisons_answered_total"
ASKED = {"compare": "always"}
OFFERED = {"compare": "offer"}


@pytest.fixture
async def always(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    """A gateway that compares every request that offers a comparison (share 1.0)."""
    async with inprocess_gateway(tmp_path, compare_share=1.0) as gateway:
        yield gateway


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _choices(events: list[Any]) -> dict[int, dict[str, Any]]:
    """Per choice index: its text, finish reason and how many role chunks it got."""
    out: dict[int, dict[str, Any]] = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            seen = out.setdefault(choice["index"], {"text": "", "finish": None, "roles": 0})
            seen["text"] += choice["delta"].get("content") or ""
            seen["roles"] += choice["delta"].get("role") == "assistant"
            seen["finish"] = choice["finish_reason"] or seen["finish"]
    return out


async def test_api_clients_that_do_not_offer_never_get_two_answers(
    always: InProcessGateway,
) -> None:
    body = (await always.chat(store=True)).json()
    assert len(body["choices"]) == 1 and "parlance" not in body
    events = await always.events(always.body(stream=True, store=True))
    assert set(_choices(events)) == {0}
    assert all("parlance" not in e for e in events[:-1])
    assert [r.sampling.n for r in always.generator.requests] == [1, 1]
    # "never" (or false) is the same as not asking.
    for compare in ("never", False):
        response = await always.chat(store=True, parlance={"compare": compare})
        assert len(response.json()["choices"]) == 1


async def test_an_offer_is_taken_at_the_share(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with inprocess_gateway(tmp_path / "a", compare_share=0.0) as gw:
        body = (await gw.chat(store=True, parlance=OFFERED)).json()
        assert len(body["choices"]) == 1 and "parlance" not in body
    async with inprocess_gateway(tmp_path / "b", compare_share=1.0) as gw:
        body = (await gw.chat(store=True, parlance=OFFERED)).json()
        assert len(body["choices"]) == 2
        assert body["parlance"]["comparison"]["reason"] == "share"
        # Not where it could not be picked (nothing stored) or could not differ (greedy).
        for fields in ({}, {"store": True, "temperature": 0.0}):
            body = (await gw.chat(parlance=OFFERED, **fields)).json()
            assert len(body["choices"]) == 1 and "parlance" not in body


async def test_a_comparison_streams_both_choices_by_index(gw: InProcessGateway) -> None:
    before = _metric(SHOWN, reason="asked")
    events = await gw.events(gw.body(stream=True, store=True, parlance=ASKED))
    assert events[-1] == "[DONE]"
    comparison = events[0]["parlance"]["comparison"]
    assert comparison["reason"] == "asked" and len(set(comparison["message_ids"])) == 2
    assert all("parlance" not in e for e in events[1:-1])
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    choices = _choices(events)
    assert choices == {
        i: {"text": "Hello there, friend.", "finish": "stop", "roles": 1} for i in (0, 1)
    }
    # One generator call for both.
    (request,) = gw.generator.requests
    assert request.sampling.n == 2
    await wait_for(lambda: len(gw.history.appends) == 1)
    assert _metric(SHOWN, reason="asked") == before + 1


async def test_both_answers_are_stored_as_siblings_with_their_ids(gw: InProcessGateway) -> None:
    body = (await gw.chat(store=True, parlance=ASKED)).json()
    ids = body["parlance"]["comparison"]["message_ids"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    (append,) = gw.history.appends
    question, first, second = append.messages
    assert (question.role, first.role, second.role) == ("user", "assistant", "assistant")
    assert [first.id, second.id] == ids
    # The first chains below the question, the second names it: siblings.
    assert not first.HasField("parent_id") and second.parent_id == question.id
    for answer in (first, second):
        assert (answer.model, answer.generated, answer.content) == (
            "fake-model",
            True,
            "Hello there, friend.",
        )
    # The generation's usage (both candidates) once.
    assert first.usage.completion_tokens == 6 and not second.HasField("usage")


async def test_a_regenerated_comparison_branches_below_the_question(gw: InProcessGateway) -> None:
    conversation = (await gw.chat(store=True)).json()["conversation_id"]
    question = gw.history.stored(conversation)[0]
    response = await gw.chat(
        gw.body(
            messages=[],
            conversation_id=conversation,
            parent_message_id=question.id,
            parlance=ASKED,
        )
    )
    first, second = gw.history.appends[-1].messages
    assert first.parent_id == second.parent_id == question.id
    assert [first.id, second.id] == response.json()["parlance"]["comparison"]["message_ids"]


class TwoMinds(FakeGenerator):
    """Test double: choice 1 says a word FakeSafety flags; choice 0 stays clean."""

    @staticmethod
    def _delta(
        index: int, text: str, script: Script, request: generator_pb2.GenerateRequest
    ) -> generator_pb2.ChoiceDelta:
        said = text.replace("there", "badword") if index == 1 else text
        return generator_pb2.ChoiceDelta(index=index, text=said, token_count=1)


async def test_a_flagged_candidate_is_never_offered_nor_stored(tmp_path: Path) -> None:
    before = _metric(WITHHELD)
    async with inprocess_gateway(tmp_path, generator=TwoMinds()) as gw:
        events = await gw.events(gw.body(stream=True, store=True, parlance=ASKED))
        ids = events[0]["parlance"]["comparison"]["message_ids"]
        choices = _choices(events)
        assert choices[0] == {"text": "Hello there, friend.", "finish": "stop", "roles": 1}
        assert choices[1]["finish"] == "content_filter"
        assert "badword" not in choices[1]["text"]
        await wait_for(lambda: len(gw.history.appends) == 1)
        # The clean one alone, an ordinary answer below the question.
        question, answer = gw.history.appends[0].messages
        assert question.role == "user"
        assert (answer.id, answer.content) == (ids[0], "Hello there, friend.")
        assert not answer.HasField("parent_id")
    assert _metric(WITHHELD) == before + 1


async def test_a_whole_answer_with_a_flagged_candidate_names_no_comparison(
    tmp_path: Path,
) -> None:
    """Found following the README on make up: the JSON response named the withheld
    candidate's id too, and a pick of it was a 404. A whole answer knows what was stored."""
    async with inprocess_gateway(tmp_path, generator=TwoMinds()) as gw:
        response = await gw.chat(gw.body(store=True, parlance=ASKED))
        assert response.status_code == 200
        body = response.json()
        assert [c["finish_reason"] for c in body["choices"]] == ["stop", "content_filter"]
        assert "comparison" not in body.get("parlance", {})
        await wait_for(lambda: len(gw.history.appends) == 1)
        _, answer = gw.history.appends[0].messages
        assert answer.content == "Hello there, friend."


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "needs a stored exchange"),
        ({"store": True, "n": 2}, "n > 1"),
        ({"store": True, "temperature": 0.0}, "needs sampling"),
    ],
)
async def test_a_comparison_it_cannot_have_is_a_400(
    gw: InProcessGateway, fields: dict[str, Any], message: str
) -> None:
    response = await gw.chat(parlance=ASKED, **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == "parlance.compare"
    assert gw.generator.requests == []


@pytest.mark.parametrize("parlance", [{"compare": "sometimes"}, {"compare": 1}, {"other": 1}])
async def test_a_malformed_extension_object_is_a_400(
    gw: InProcessGateway, parlance: dict[str, Any]
) -> None:
    response = await gw.chat(store=True, parlance=parlance)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_the_pick_is_stored_and_counted(gw: InProcessGateway) -> None:
    answered = _metric(ANSWERED)
    body = (await gw.chat(store=True, parlance=ASKED)).json()
    conversation = body["conversation_id"]
    first, second = body["parlance"]["comparison"]["message_ids"]
    response = await gw.client.post(
        f"/v1/conversations/{conversation}/comparisons",
        json={"chosen_message_id": first, "rejected_message_id": second},
        headers=gw.alice.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["active_message_id"] == first
    assert gw.history.stored(conversation)[-1].id == first
    assert _metric(ANSWERED) == answered + 1


async def test_a_stopped_comparison_keeps_its_first_answer_only(gw: InProcessGateway) -> None:
    # Two moderation windows of each candidate are sent, then the engine hangs and the client
    # leaves: two half answers are no comparison.
    gw.generator.script = Script(
        deltas=["Hello there, this ", "is a test. ", "And more."], hang_after=2
    )
    body = gw.body(stream=True, store=True, parlance=ASKED)
    received = await gw.stream_until_disconnect(body, 6)
    ids = json.loads(received[0].split(b"data: ", 1)[1].split(b"\n\n", 1)[0])["parlance"][
        "comparison"
    ]["message_ids"]
    await wait_for(lambda: len(gw.history.appends) == 1 and gw.generator.in_flight == 0)
    question, answer = gw.history.appends[0].messages
    assert question.role == "user"
    assert (answer.id, answer.finish_reason) == (ids[0], "cancelled")
    # Exactly what the client was sent of it: the windows moderation released.
    assert answer.content == "Hello there, this is a test."
