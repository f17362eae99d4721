"""Intent routing wired into POST /v1/chat/completions (issue 18), in process: a route file in
tmp_path, the FakeGenerator's bag-of-words embedding as the embedding model (a stand-in: the
real all-MiniLM-L6-v2 is tested through the real stack in tests/test_intents_stack.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai.types.chat
import pytest

from parlance.gateway.moderation import input_flags
from parlance.generator.v1 import generator_pb2
from parlance.safety.v1 import safety_pb2
from parlance.testing.fakes import FAKE_MODEL, FakeGenerator
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

CODER = "fake-coder"
CODING_PROMPT = "You are a careful programming assistant."
COOKING_PROMPT = "You are a patient chef."

ROUTES = f"""
version: 1
threshold: 0.4
method: nearest
k: 1
default:
  model: default
routes:
  - name: coding
    model: {CODER}
    system_prompt: {CODING_PROMPT}
    sampling: {{temperature: 0.2}}
    examples:
      - python function raises keyerror
      - javascript code compile error
      - debug python code stack trace
  - name: cooking
    system_prompt: {COOKING_PROMPT}
    # Stricter than the fake safety's clean score (0.01): every cooking message is refused.
    safety: {{harassment: 0.005}}
    examples:
      - recipe for tomato soup
      - how long to bake bread
      - cook rice in a pot
"""

CODING_QUESTION = "my python code raises keyerror, how do I debug it"


def routing_generator() -> FakeGenerator:
    generator = FakeGenerator()
    generator.embedding = True
    generator.extra_chat_models = [CODER]
    return generator


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    async with inprocess_gateway(
        tmp_path, generator=routing_generator(), intent_routes=str(routes)
    ) as gateway:
        yield gateway


def system_prompts(request: generator_pb2.GenerateRequest) -> list[str]:
    return [m.content for m in request.chat.messages if m.role == "system"]


async def test_a_coding_question_takes_the_coding_route(routed: InProcessGateway) -> None:
    response = await routed.chat(routed.body(CODING_QUESTION, model="default"))
    assert response.status_code == 200, response.text
    sent = routed.generator.requests[-1]
    assert sent.model == CODER
    assert sent.chat.messages[0].role == "system"
    assert sent.chat.messages[0].content == CODING_PROMPT
    assert sent.chat.messages[-1].content == CODING_QUESTION
    assert sent.sampling.temperature == pytest.approx(0.2)
    assert response.headers["x-parlance-intent"] == "coding"
    body = response.json()
    assert body["model"] == CODER
    intent = body["parlance"]["intent"]
    assert intent["name"] == "coding" and intent["fallback"] is False
    assert 0.4 <= intent["score"] <= 1.0
    stages = [p.split(";")[0] for p in response.headers["server-timing"].split(", ")]
    assert "intent" in stages
    # The OpenAI SDK still parses the body and keeps the extension object.
    parsed = openai.types.chat.ChatCompletion.model_validate(body)
    assert parsed.model_extra is not None and parsed.model_extra["parlance"] == body["parlance"]


async def test_an_explicit_model_and_sampling_win_over_the_route(routed: InProcessGateway) -> None:
    response = await routed.chat(routed.body(CODING_QUESTION, temperature=0.9))
    assert response.status_code == 200, response.text
    sent = routed.generator.requests[-1]
    assert sent.model == FAKE_MODEL
    assert sent.sampling.temperature == pytest.approx(0.9)
    # What the request does not pin still applies.
    assert system_prompts(sent) == [CODING_PROMPT]
    assert response.headers["x-parlance-intent"] == "coding"


async def test_an_alias_is_replaced_by_the_route_model(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    async with inprocess_gateway(
        tmp_path,
        generator=routing_generator(),
        intent_routes=str(routes),
        model_aliases={"chat": FAKE_MODEL},
    ) as gw:
        response = await gw.chat(gw.body(CODING_QUESTION, model="chat"))
        assert response.status_code == 200, response.text
        assert gw.generator.requests[-1].model == CODER


async def test_a_message_matching_nothing_takes_the_default_route(
    routed: InProcessGateway,
) -> None:
    response = await routed.chat(routed.body("hello friend, nice weather today", model="default"))
    assert response.status_code == 200, response.text
    sent = routed.generator.requests[-1]
    assert sent.model == FAKE_MODEL  # the default route's "default"
    assert system_prompts(sent) == []
    assert response.headers["x-parlance-intent"] == "default"
    intent = response.json()["parlance"]["intent"]
    assert intent["name"] == "default" and intent["fallback"] is True
    assert intent["score"] < 0.4


async def test_a_stream_carries_the_intent_on_its_first_chunk(routed: InProcessGateway) -> None:
    events = await routed.events(routed.body(CODING_QUESTION, stream=True))
    chunks = [e for e in events if e != "[DONE]"]
    assert chunks[0]["parlance"]["intent"]["name"] == "coding"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("parlance" not in c for c in chunks[1:])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello there, friend."
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)


async def test_a_failed_classification_takes_the_default_route(
    routed: InProcessGateway,
) -> None:
    routed.generator.embed_down = True
    response = await routed.chat(routed.body(CODING_QUESTION, model="default"))
    assert response.status_code == 200, response.text
    assert routed.generator.embed_requests  # it was tried
    assert response.headers["x-parlance-intent"] == "default"
    assert response.json()["parlance"]["intent"]["fallback"] is True
    assert system_prompts(routed.generator.requests[-1]) == []


async def test_the_route_safety_threshold_applies_to_the_input(routed: InProcessGateway) -> None:
    response = await routed.chat(routed.body("a recipe for tomato soup please"))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"
    assert "harassment" in response.json()["error"]["message"]
    assert routed.generator.requests == []
    # The same fake verdict passes on a route without a threshold.
    assert (await routed.chat(routed.body(CODING_QUESTION))).status_code == 200


async def test_moderation_runs_on_the_request_messages_not_the_route_prompt(
    routed: InProcessGateway,
) -> None:
    response = await routed.chat(routed.body(CODING_QUESTION, store=True))
    assert response.status_code == 200, response.text
    assert routed.safety.texts(safety_pb2.DIRECTION_INPUT) == [CODING_QUESTION]
    stored = routed.history.stored(response.json()["conversation_id"])
    assert [m.role for m in stored] == ["user", "assistant"]


async def test_a_flagged_message_is_refused_on_any_route(routed: InProcessGateway) -> None:
    response = await routed.chat(routed.body(f"{CODING_QUESTION} badword"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"
    assert routed.generator.requests == []


async def test_without_a_route_file_nothing_changes(gw: InProcessGateway) -> None:
    gw.generator.embedding = True
    response = await gw.chat(gw.body(CODING_QUESTION))
    assert response.status_code == 200
    assert "x-parlance-intent" not in response.headers
    assert "parlance" not in response.json()
    stages = [p.split(";")[0] for p in response.headers["server-timing"].split(", ")]
    assert "intent" not in stages
    assert gw.generator.embed_requests == []
    assert system_prompts(gw.generator.requests[-1]) == []


async def test_a_route_to_an_unknown_model_stops_the_start_up(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.replace(CODER, "no-such-model"))
    with pytest.raises(RuntimeError, match=r"route 'coding'.*no-such-model"):
        async with inprocess_gateway(
            tmp_path, generator=routing_generator(), intent_routes=str(routes)
        ):
            pass


async def test_a_route_max_tokens_stays_within_the_key_limit(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.replace("{temperature: 0.2}", "{temperature: 0.2, max_tokens: 100}"))
    async with inprocess_gateway(
        tmp_path, generator=routing_generator(), intent_routes=str(routes)
    ) as gw:
        limited = await gw.create_key(max_tokens=64)
        response = await gw.chat(gw.body(CODING_QUESTION), caller=limited)
        assert response.status_code == 200, response.text
        assert response.headers["x-parlance-intent"] == "coding"
        assert gw.generator.requests[-1].sampling.max_tokens == 64
        # Within the limit, the route's default applies.
        await gw.chat(gw.body(CODING_QUESTION))
        assert gw.generator.requests[-1].sampling.max_tokens == 100


def test_a_route_threshold_never_loosens_what_safety_flagged() -> None:
    # The user's own words choose the route: a route that set a category's threshold above
    # safety's flag must not let flagged input through.
    verdict = safety_pb2.Classification(
        flagged=True,
        categories=[safety_pb2.CategoryResult(category="violence", score=0.6, flagged=True)],
    )
    assert input_flags(verdict, {"violence": 0.99}) == ["violence"]
    clean = safety_pb2.Classification(
        categories=[safety_pb2.CategoryResult(category="violence", score=0.3, flagged=False)]
    )
    assert input_flags(clean, {"violence": 0.2}) == ["violence"]
    assert input_flags(clean, {"violence": 0.5}) == []
