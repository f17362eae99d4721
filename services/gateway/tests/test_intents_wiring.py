"""Intent routing's history wiring, in process (issue 18): the classified intent stored on the
user message it classified, and the re-ask signal (a stored message that re-asks the previous
one is recorded as implicit feedback on the answer between them, in the background). The
FakeGenerator's bag-of-words embedding stands in for the embedding model (the real
all-MiniLM-L6-v2 runs in tests/test_intents_stack.py); the history is the fake's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from parlance.testing.fakes import FAKE_EMBED_MODEL, FakeGenerator, Script
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

ROUTES = """
version: 1
threshold: 0.4
reask_threshold: 0.8
routes:
  - name: coding
    system_prompt: You are a careful programming assistant.
    examples:
      - python function raises keyerror
      - javascript code compile error
      - debug python code stack trace
  - name: cooking
    examples:
      - recipe for tomato soup
      - how long to bake bread
      - cook rice in a pot
"""

QUESTION = "my python code raises keyerror, how do I debug it"
REASKED = "my python code raises a keyerror, how do I debug it?"
NEW_TOPIC = "how long to bake bread with rice"


def generator() -> FakeGenerator:
    fake = FakeGenerator()
    fake.embedding = True
    return fake


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    async with inprocess_gateway(
        tmp_path, generator=generator(), intent_routes=str(routes)
    ) as gateway:
        yield gateway


def reasks(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("parlance_gateway_intent_reasks_total", {"outcome": outcome})
        or 0.0
    )


async def eventually(condition: object, timeout_s: float = 5.0) -> None:
    """The re-ask signal is written in the background: wait for it (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "the background write did not happen"
        await asyncio.sleep(0.02)


async def test_the_intent_is_stored_on_the_classified_user_message(gw: InProcessGateway) -> None:
    first = await gw.chat(gw.body(QUESTION, store=True))
    assert first.status_code == 200, first.text
    conversation = first.json()["conversation_id"]
    second = await gw.chat(gw.body(NEW_TOPIC, conversation_id=conversation))
    assert second.headers["x-parlance-intent"] == "cooking"
    stored = gw.history.stored(conversation)
    assert [(m.role, m.intent) for m in stored] == [
        ("user", "coding"),
        ("assistant", ""),
        ("user", "cooking"),
        ("assistant", ""),
    ]
    # Only the newest user message of a request is classified: earlier ones sent with it are
    # stored without an intent.
    sent = gw.body(QUESTION, store=True)
    sent["messages"] = [
        {"role": "user", "content": NEW_TOPIC},
        {"role": "assistant", "content": "About an hour."},
        {"role": "user", "content": QUESTION},
    ]
    many = await gw.chat(sent)
    assert [m.intent for m in gw.history.stored(many.json()["conversation_id"])] == [
        "",
        "",
        "coding",
        "",
    ]


async def test_a_reasked_question_is_implicit_feedback_on_the_answer_before(
    gw: InProcessGateway,
) -> None:
    first = await gw.chat(gw.body(QUESTION, store=True))
    conversation = first.json()["conversation_id"]
    answer = gw.history.stored(conversation)[-1]
    assert answer.role == "assistant"

    not_before = reasks("not_reask")
    embeds = len(gw.generator.embed_requests)
    other = await gw.chat(gw.body(NEW_TOPIC, conversation_id=conversation))
    assert other.status_code == 200
    await eventually(lambda: reasks("not_reask") == not_before + 1)
    assert gw.history.implicit_feedback == []
    # One embedding call, the new message's: the previous one's vector was remembered.
    assert len(gw.generator.embed_requests) == embeds + 1

    # The re-ask follows the cooking answer now: that answer gets the weak negative.
    cooking_answer = gw.history.stored(conversation)[-1]
    again = await gw.chat(
        gw.body("how long to bake bread with rice?", conversation_id=conversation)
    )
    assert again.status_code == 200
    await eventually(lambda: len(gw.history.implicit_feedback) == 1)
    feedback = gw.history.implicit_feedback[0]
    assert feedback.message_id == cooking_answer.id != answer.id
    owner = gw.history.conversations[conversation].user_id
    assert (feedback.kind, feedback.conversation_id, feedback.user_id) == (
        "reask",
        conversation,
        owner,
    )
    assert 0.8 <= feedback.score <= 1.0


async def test_no_reask_signal_without_a_threshold_or_a_stored_conversation(
    tmp_path: Path,
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.replace("reask_threshold: 0.8\n", ""))
    async with inprocess_gateway(tmp_path, generator=generator(), intent_routes=str(routes)) as gw:
        first = await gw.chat(gw.body(QUESTION, store=True))
        conversation = first.json()["conversation_id"]
        await gw.chat(gw.body(QUESTION, conversation_id=conversation))
        # A stateless request that repeats itself: no stored answer to put feedback on.
        await gw.chat(gw.body(QUESTION))
        embeds = len(gw.generator.embed_requests)
        await asyncio.sleep(0.1)
        assert gw.history.implicit_feedback == []
        assert len(gw.generator.embed_requests) == embeds


async def test_the_route_system_prompt_counts_when_the_context_is_fitted(tmp_path: Path) -> None:
    # A 300-token window, 50 for the answer: the stored exchange and the new question fit
    # alone (about 40 tokens) but not beside the route's long system prompt (about 225).
    prompt = "You are a careful programming assistant. " * 22
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.replace("You are a careful programming assistant.", prompt.strip()))
    fake = FakeGenerator(max_model_len=300)
    fake.embedding = True
    async with inprocess_gateway(tmp_path, generator=fake, intent_routes=str(routes)) as gw:
        first = await gw.chat(gw.body(QUESTION, store=True, max_tokens=50))
        conversation = first.json()["conversation_id"]
        second = await gw.chat(gw.body(REASKED, conversation_id=conversation, max_tokens=50))
        assert second.status_code == 200, second.text
        sent = gw.generator.requests[-1].chat.messages
        # The stored exchange was dropped to make room: the system prompt and the question.
        assert [(m.role, m.content) for m in sent] == [
            ("system", prompt.strip()),
            ("user", REASKED),
        ]
        assert gw.generator.count_requests[-1].chat.messages[0].content == prompt.strip()


@pytest.mark.parametrize("stream", [False, True])
async def test_the_tpm_reservation_follows_the_route(tmp_path: Path, stream: bool) -> None:
    # The route sets max_tokens 900: a request without max_tokens is admitted on the default
    # estimate (~271 tokens of 1000), then its reservation grows to the route's ~915, so a
    # second one in the same minute no longer fits while the first is running. A stream's
    # grows once its first content chunk is sent (off the way to the first token).
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        ROUTES.replace(
            "    system_prompt: You are a careful programming assistant.\n",
            "    system_prompt: You are a careful programming assistant.\n"
            "    sampling: {max_tokens: 900}\n",
        )
    )
    fake = generator()
    # Enough words for output moderation's first window to close: the stream's first content
    # chunk is sent, then the answer hangs.
    words = ["Hello", " there", ", friend.", " More", " words", " follow."]
    fake.scripts = [Script(deltas=words, hang_after=5)]
    async with inprocess_gateway(tmp_path, generator=fake, intent_routes=str(routes)) as gw:
        caller = await gw.create_key(tpm=1000)
        first = asyncio.create_task(gw.chat(gw.body(QUESTION, stream=stream), caller=caller))
        await eventually(lambda: fake.in_flight == 1)
        second = await gw.chat(gw.body(QUESTION), caller=caller)
        assert second.status_code == 429, second.text
        assert "Rate limit reached for tokens" in second.json()["error"]["message"]
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_a_failed_classification_stores_no_intent(gw: InProcessGateway) -> None:
    gw.generator.embed_down = True
    response = await gw.chat(gw.body(QUESTION, store=True))
    assert response.status_code == 200, response.text
    assert response.headers["x-parlance-intent"] == "default"
    stored = gw.history.stored(response.json()["conversation_id"])
    assert [m.intent for m in stored] == ["", ""]


async def test_a_stored_follow_up_is_classified_with_the_earlier_turn(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        ROUTES.replace(
            "threshold: 0.4\n", "threshold: 0.4\ncontext_turns: 1\ncontext_weight: 1.0\n"
        )
    )
    async with inprocess_gateway(tmp_path, generator=generator(), intent_routes=str(routes)) as gw:
        follow_up = "and with potatoes?"
        first = await gw.chat(gw.body("recipe for tomato soup please", store=True))
        assert first.headers["x-parlance-intent"] == "cooking"
        conversation = first.json()["conversation_id"]
        embeds = len(gw.generator.embed_requests)
        again = await gw.chat(gw.body(follow_up, conversation_id=conversation))
        # The stored earlier turn pulls the follow-up to its intent.
        assert again.headers["x-parlance-intent"] == "cooking"
        # One embedding call, the follow-up's, made while the conversation was read: the
        # earlier turn's vector was remembered from its own request.
        calls = gw.generator.embed_requests[embeds:]
        assert [[i.text for i in c.inputs] for c in calls] == [[follow_up]]
        # Alone (no conversation), or as a new root of the conversation: no context.
        alone = await gw.chat(gw.body(follow_up))
        assert alone.headers["x-parlance-intent"] == "default"
        root = await gw.chat(gw.body(follow_up, conversation_id=conversation, parent_message_id=""))
        assert root.headers["x-parlance-intent"] == "default"


async def test_the_route_file_names_the_embedding_model(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"embed_model: {FAKE_EMBED_MODEL}\n" + ROUTES)
    async with inprocess_gateway(
        tmp_path, generator=generator(), intent_routes=str(routes)
    ) as gateway:
        response = await gateway.chat(gateway.body(QUESTION))
        assert response.headers["x-parlance-intent"] == "coding"
        assert {r.model for r in gateway.generator.embed_requests} == {FAKE_EMBED_MODEL}
    # A model no generator serves stops the start-up, named.
    routes.write_text("embed_model: no-such-embedder\n" + ROUTES)
    with pytest.raises(RuntimeError, match=r"INTENT_ROUTES cannot be used.*no-such-embedder"):
        async with inprocess_gateway(tmp_path, generator=generator(), intent_routes=str(routes)):
            pass
    # GATEWAY_INTENT_EMBED_MODEL, when set, overrides the file.
    async with inprocess_gateway(
        tmp_path,
        generator=generator(),
        intent_routes=str(routes),
        intent_embed_model=FAKE_EMBED_MODEL,
    ) as gateway:
        response = await gateway.chat(gateway.body(QUESTION))
        assert response.headers["x-parlance-intent"] == "coding"
        assert {r.model for r in gateway.generator.embed_requests} == {FAKE_EMBED_MODEL}


async def test_the_reask_signal_can_use_its_own_embedding_model(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    # Routing through the first embedding model listed (""), the re-ask signal through the
    # one the file names: a separate embedder, which embeds both messages itself.
    routes.write_text(ROUTES + f"reask_embed_model: {FAKE_EMBED_MODEL}\n")
    async with inprocess_gateway(tmp_path, generator=generator(), intent_routes=str(routes)) as gw:
        first = await gw.chat(gw.body(QUESTION, store=True))
        conversation = first.json()["conversation_id"]
        answer = gw.history.stored(conversation)[-1]
        calls = len(gw.generator.embed_requests)
        again = await gw.chat(gw.body(REASKED, conversation_id=conversation))
        assert again.headers["x-parlance-intent"] == "coding"
        await eventually(lambda: len(gw.history.implicit_feedback) == 1)
        assert gw.history.implicit_feedback[0].message_id == answer.id
        # The classification's call, then the re-ask embedder's own: both texts, one call.
        sent = gw.generator.embed_requests[calls:]
        assert [[i.text for i in r.inputs] for r in sent] == [[REASKED], [REASKED, QUESTION]]
    # A re-ask model no generator serves stops the start-up, named.
    routes.write_text(ROUTES + "reask_embed_model: no-such-embedder\n")
    with pytest.raises(RuntimeError, match=r"reask_embed_model 'no-such-embedder' cannot be used"):
        async with inprocess_gateway(tmp_path, generator=generator(), intent_routes=str(routes)):
            pass
