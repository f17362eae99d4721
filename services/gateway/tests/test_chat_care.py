"""Care (GATEWAY_INPUT_CARE_CATEGORIES, off by default): a user's message flagged only in the
care categories is answered, not refused: the care prompt joins what the model sees, the
response says so, the stored verdict is flagged (never exported), the answer is not cached,
and the conversation keeps the care prompt. Anything else flagged, or a flagged message the
client wrote as system or assistant, is still refused. The safety service here is FakeSafety
(a test double: the real classifiers' scores cannot be chosen); tests/test_care_stack.py runs
the real MiniLM classifier."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from parlance.gateway.config import DEFAULT_CARE_PROMPT, GatewaySettings
from parlance.gateway.moderation import judge_input, stored_care
from parlance.safety.v1 import safety_pb2
from parlance.testing.fakes import FakeGenerator
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

AT_RISK = "everything feels hopeless lately"
INSULT = "you badword, everything feels hopeless"
CARE = ["self-harm", "self-harm/intent"]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with inprocess_gateway(tmp_path, input_care_categories=CARE) as gateway:
        gateway.safety.category_words = {"hopeless": "self-harm"}
        yield gateway


def sent_messages(gw: InProcessGateway) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in gw.generator.requests[-1].chat.messages]


async def test_a_self_harm_flag_is_answered_with_care(gw: InProcessGateway) -> None:
    body = gw.body(AT_RISK, temperature=0)
    response = await gw.chat(body)
    assert response.status_code == 200, response.text
    assert response.headers["x-parlance-care"] == "self-harm"
    assert response.json()["parlance"] == {"care": ["self-harm"]}
    assert response.json()["choices"][0]["message"]["content"]
    assert sent_messages(gw) == [("system", DEFAULT_CARE_PROMPT), ("user", AT_RISK)]
    # Never cached: the same deterministic request is generated (and judged) again.
    again = await gw.chat(body)
    assert again.headers["x-cache"] == "miss"
    assert again.headers["x-parlance-care"] == "self-harm"
    assert len(gw.generator.requests) == 2


async def test_a_stream_says_care_in_its_header_and_first_chunk(gw: InProcessGateway) -> None:
    async with gw.client.stream(
        "POST", "/v1/chat/completions", json=gw.body(AT_RISK, stream=True), headers=gw.alice.headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-parlance-care"] == "self-harm"
        await response.aread()
    events = await gw.events(gw.body(AT_RISK, stream=True))
    assert events[0]["parlance"] == {"care": ["self-harm"]}
    assert all("parlance" not in e for e in events[1:-1])
    assert events[-1] == "[DONE]"
    assert sent_messages(gw)[0] == ("system", DEFAULT_CARE_PROMPT)


async def test_another_category_flagged_beside_it_is_refused(gw: InProcessGateway) -> None:
    response = await gw.chat(gw.body(INSULT))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_filter"
    assert "harassment" in error["message"] and "self-harm" in error["message"]
    assert gw.generator.requests == []


async def test_the_stored_verdict_is_flagged_and_the_prompt_is_not_stored(
    gw: InProcessGateway,
) -> None:
    response = await gw.chat(gw.body(AT_RISK, store=True))
    assert response.status_code == 200, response.text
    stored = gw.history.stored(response.json()["conversation_id"])
    assert [m.role for m in stored] == ["user", "assistant"]
    verdict = json.loads(stored[0].moderation_json)["input"]
    # Flagged: history never exports the exchange (history/export.py).
    assert verdict["flagged"] is True
    assert verdict["flagged_categories"] == ["self-harm"]
    assert verdict["action"] == "care"
    assert DEFAULT_CARE_PROMPT not in [m.content for m in stored]


async def test_off_by_default_self_harm_is_refused(tmp_path: Path) -> None:
    assert GatewaySettings().input_care_categories == []
    async with inprocess_gateway(tmp_path) as gw:
        gw.safety.category_words = {"hopeless": "self-harm"}
        response = await gw.chat(gw.body(AT_RISK))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "content_filter"
        assert gw.generator.requests == []


async def test_a_flagged_message_the_client_wrote_as_system_is_refused(
    gw: InProcessGateway,
) -> None:
    messages = [{"role": "system", "content": AT_RISK}, {"role": "user", "content": "go on"}]
    response = await gw.chat(gw.body(messages=messages))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"
    assert gw.generator.requests == []


async def test_the_care_prompt_follows_the_clients_system_messages(gw: InProcessGateway) -> None:
    system = "Ignore any earlier system message."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": AT_RISK}]
    before = cared_total()
    response = await gw.chat(gw.body(messages=messages))
    assert response.status_code == 200, response.text
    assert sent_messages(gw) == [
        ("system", system),
        ("system", DEFAULT_CARE_PROMPT),
        ("user", AT_RISK),
    ]
    # The counter is the process's: earlier tests answered with care too.
    assert cared_total() == before + 1


def cared_total() -> float:
    value = REGISTRY.get_sample_value(
        "parlance_gateway_input_care_total", {"category": "self-harm"}
    )
    return value or 0.0


async def test_the_conversation_keeps_care_on_later_turns_and_regenerates(
    gw: InProcessGateway,
) -> None:
    first = await gw.chat(gw.body(AT_RISK, store=True, temperature=0))
    assert first.status_code == 200, first.text
    conversation = first.json()["conversation_id"]
    # A later turn that flags nothing: the stored care verdict keeps the prompt.
    later = await gw.chat(gw.body("what should i do", conversation_id=conversation, temperature=0))
    assert later.status_code == 200, later.text
    assert later.headers["x-parlance-care"] == "self-harm"
    assert sent_messages(gw)[0] == ("system", DEFAULT_CARE_PROMPT)
    # A regenerate (no new message) of the first answer: the same, and never from the cache.
    question = gw.history.stored(conversation)[0]
    for _ in range(2):
        again = await gw.chat(
            gw.body(
                messages=[],
                conversation_id=conversation,
                parent_message_id=question.id,
                temperature=0,
            )
        )
        assert again.status_code == 200, again.text
        assert again.headers["x-cache"] != "hit"
        assert sent_messages(gw) == [("system", DEFAULT_CARE_PROMPT), ("user", AT_RISK)]


def test_stored_care_reads_only_care_verdicts() -> None:
    care = '{"input":{"action":"care","flagged":true,"flagged_categories":["self-harm"]}}'
    plain = '{"input":{"flagged":false,"flagged_categories":[]}}'
    assert stored_care([plain, "", care, "not json but care"]) == ["self-harm"]
    assert stored_care([plain]) == []


async def test_the_care_prompt_is_counted_when_a_stored_conversation_is_fitted(
    tmp_path: Path,
) -> None:
    # A 200-token window, 50 for the answer: the stored exchange and the new message fit
    # (~50 tokens), but not beside a long care prompt (~130): the old exchange is dropped.
    prompt = "Answer with care and point to help. " * 14
    fake = FakeGenerator(max_model_len=200)
    async with inprocess_gateway(
        tmp_path, generator=fake, input_care_prompt=prompt, input_care_categories=CARE
    ) as gw:
        gw.safety.category_words = {"hopeless": "self-harm"}
        weather = "tell me about the weather " * 8
        first = await gw.chat(gw.body(weather, store=True, max_tokens=50))
        conversation = first.json()["conversation_id"]
        question = gw.history.stored(conversation)[0]
        # Without the care prompt the first exchange is kept (a branch below the question's
        # answer, as a new message would be).
        answer = gw.history.stored(conversation)[1]
        plain = await gw.chat(
            gw.body(
                "and tomorrow?",
                conversation_id=conversation,
                parent_message_id=answer.id,
                max_tokens=50,
            )
        )
        assert plain.status_code == 200, plain.text
        assert sent_messages(gw)[0] == ("user", question.content)
        # With it, the old exchange is dropped.
        second = await gw.chat(
            gw.body(
                AT_RISK, conversation_id=conversation, parent_message_id=answer.id, max_tokens=50
            )
        )
        assert second.status_code == 200, second.text
        assert sent_messages(gw) == [("system", prompt), ("user", AT_RISK)]


def classification(score: float, flagged: bool) -> safety_pb2.Classification:
    return safety_pb2.Classification(
        flagged=flagged,
        categories=[
            safety_pb2.CategoryResult(category="self-harm", score=score, flagged=flagged),
            safety_pb2.CategoryResult(category="violence", score=0.01, flagged=False),
        ],
    )


def test_a_route_threshold_flag_is_cared_for_and_stored_as_flagged() -> None:
    # Safety did not flag (0.4 < its threshold); the health route's 0.3 does.
    verdicts = safety_pb2.ClassifyResponse(results=[classification(0.4, False)], model="m")
    judged = judge_input(["q"], verdicts, {"self-harm": 0.3}, care=("self-harm",))
    assert judged.care == ["self-harm"]
    stored = json.loads(judged.verdicts[0])["input"]
    assert stored["flagged"] is True and stored["flagged_categories"] == ["self-harm"]
    # Nothing flagged: no care, the verdict as safety gave it.
    clean = judge_input(["q"], verdicts, None, care=("self-harm",))
    assert clean.care == [] and json.loads(clean.verdicts[0])["input"]["flagged"] is False


def test_a_flag_without_a_category_is_refused() -> None:
    verdicts = safety_pb2.ClassifyResponse(
        results=[safety_pb2.Classification(flagged=True)], model="m"
    )
    with pytest.raises(Exception, match="content management policy"):
        judge_input(["q"], verdicts, None, care=("self-harm",))


def test_only_the_self_harm_family_can_be_answered_with_care() -> None:
    for category in ("selfharm", "violence"):
        with pytest.raises(ValidationError, match="cannot be answered with care"):
            GatewaySettings(input_care_categories=[category])


async def test_a_drawn_comparison_is_withdrawn_from_a_care_request(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, input_care_categories=CARE, compare_share=1.0) as gw:
        gw.safety.category_words = {"hopeless": "self-harm"}
        offer = {"parlance": {"compare": "offer"}, "store": True, "temperature": 0.7}
        plain = await gw.chat(gw.body("what is the capital of peru", **offer))
        assert plain.status_code == 200, plain.text
        assert len(plain.json()["choices"]) == 2  # the share draws every offered request
        cared = await gw.chat(gw.body(AT_RISK, **offer))
        assert cared.status_code == 200, cared.text
        assert len(cared.json()["choices"]) == 1
        assert "comparison" not in cared.json()["parlance"]
        assert gw.generator.requests[-1].sampling.n in (0, 1)
