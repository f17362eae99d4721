"""What the chat route writes to history: the request's messages and the answer, in a new or
an existing conversation, on a branch, and the stopped streams."""

from __future__ import annotations

import asyncio
from pathlib import Path

from parlance.testing.fakes import Script, wait_for
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

# Two moderation windows ("Hello there, this ", "is a test."), then the engine hangs.
STOPPED = ["Hello there, this ", "is a test. ", "And more."]


async def test_store_creates_a_conversation(gw: InProcessGateway) -> None:
    body = (await gw.chat(store=True)).json()
    conversation = body["conversation_id"]
    assert conversation.startswith("conv_")
    (append,) = gw.history.appends
    assert append.user_id == gw.alice.user_id
    assert append.create_if_missing and append.title == "Hi there"
    messages = gw.history.stored(conversation)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Hi there"),
        ("assistant", "Hello there, friend."),
    ]
    answer = messages[1]
    assert (answer.model, answer.finish_reason) == ("fake-model", "stop")
    assert answer.usage.completion_tokens == 3
    assert answer.HasField("time_to_first_token_ms") and answer.HasField("total_time_ms")


async def test_without_store_nothing_is_written(gw: InProcessGateway) -> None:
    assert "conversation_id" not in (await gw.chat()).json()
    assert gw.history.appends == []


async def test_a_conversation_continues_with_its_context(gw: InProcessGateway) -> None:
    conversation = (await gw.chat(gw.body("First question", store=True))).json()["conversation_id"]
    second = await gw.chat(gw.body("Second question", conversation_id=conversation))
    assert second.json()["conversation_id"] == conversation
    sent = [(m.role, m.content) for m in gw.generator.requests[-1].chat.messages]
    assert sent == [
        ("user", "First question"),
        ("assistant", "Hello there, friend."),
        ("user", "Second question"),
    ]
    assert len(gw.history.stored(conversation)) == 4


async def test_a_stream_stores_its_exchange_and_names_the_conversation(
    gw: InProcessGateway,
) -> None:
    events = await gw.events(gw.body(stream=True, store=True))
    conversation = events[0]["conversation_id"]
    assert all(e["conversation_id"] == conversation for e in events[:-1])
    await wait_for(lambda: len(gw.history.appends) == 1)
    assert gw.history.stored(conversation)[-1].content == "Hello there, friend."


async def test_a_regenerate_branches_below_the_question(gw: InProcessGateway) -> None:
    conversation = (await gw.chat(store=True)).json()["conversation_id"]
    question = gw.history.stored(conversation)[0]
    gw.generator.script = Script(deltas=["Another", " answer."])
    response = await gw.chat(
        gw.body(messages=[], conversation_id=conversation, parent_message_id=question.id)
    )
    assert response.status_code == 200
    branch = gw.history.stored(conversation)
    assert [m.content for m in branch] == ["Hi there", "Another answer."]
    assert branch[1].parent_id == question.id
    # The context was the path to the question.
    assert [m.content for m in gw.generator.requests[-1].chat.messages] == ["Hi there"]


async def test_an_edit_from_a_new_root(gw: InProcessGateway) -> None:
    conversation = (await gw.chat(store=True)).json()["conversation_id"]
    response = await gw.chat(gw.body("Edited", conversation_id=conversation, parent_message_id=""))
    assert response.status_code == 200
    assert [m.content for m in gw.generator.requests[-1].chat.messages] == ["Edited"]
    first = gw.history.appends[-1].messages[0]
    assert first.HasField("parent_id") and first.parent_id == ""


async def test_history_down_keeps_the_exchange_in_the_outbox(gw: InProcessGateway) -> None:
    gw.history.down = True
    response = await gw.chat(store=True)
    assert response.status_code == 200
    assert gw.state.outbox.depth == 1
    gw.history.down = False
    await wait_for(lambda: len(gw.history.appends) == 1)
    assert gw.history.stored(response.json()["conversation_id"])[-1].role == "assistant"


async def test_a_stopped_stream_stores_what_was_sent(gw: InProcessGateway) -> None:
    gw.generator.script = Script(deltas=STOPPED, hang_after=2)
    received = await gw.stream_until_disconnect(gw.body(stream=True, store=True), 3)
    assert b'"role":"assistant"' in received[0]
    await wait_for(lambda: len(gw.history.appends) == 1)
    answer = gw.history.appends[0].messages[-1]
    assert answer.finish_reason == "cancelled"
    # Exactly the text the client was sent: the windows moderation released before the stop.
    assert answer.content == "Hello there, this is a test."
    assert gw.generator.cancelled == 1


async def test_a_stopped_stream_without_store_writes_nothing(gw: InProcessGateway) -> None:
    gw.generator.script = Script(hang_after=1)
    await gw.stream_until_disconnect(gw.body(stream=True), 1)
    await wait_for(lambda: gw.generator.in_flight == 0)
    await asyncio.sleep(0.05)
    assert gw.history.appends == []


async def test_a_stopped_stream_is_never_cached(gw: InProcessGateway) -> None:
    gw.generator.scripts = [Script(deltas=STOPPED, hang_after=2)]
    await gw.stream_until_disconnect(gw.body(stream=True, temperature=0), 3)
    await wait_for(lambda: gw.generator.in_flight == 0)
    assert (await gw.chat(temperature=0)).headers["x-cache"] == "miss"


async def test_titles_are_written_for_new_conversations(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, generate_titles=True) as gw:
        gw.generator.scripts = [Script(), Script(deltas=["Greeting", " chat"])]
        conversation = (await gw.chat(store=True)).json()["conversation_id"]
        await wait_for(
            lambda: gw.history.conversations[conversation].conversation.title == "Greeting chat"
        )
        assert gw.generator.requests[-1].request_id.startswith("title-")


async def test_one_users_backlog_refuses_only_that_users_stored_chats(tmp_path: Path) -> None:
    # History is down and alice's exchanges fill her share of the outbox: her next stored chat
    # is refused before anything is generated, bob's still goes through (issue 14, finding 1).
    async with inprocess_gateway(tmp_path, outbox_max_items_per_user=2) as gw:
        gw.history.down = True
        for _ in range(2):
            assert (await gw.chat(store=True)).status_code == 200
        generated = len(gw.generator.requests)
        refused = await gw.chat(store=True)
        assert refused.status_code == 503, refused.text
        assert len(gw.generator.requests) == generated
        assert (await gw.chat(store=True, caller=gw.bob)).status_code == 200
        # Without store nothing waits in the outbox: alice is still served.
        assert (await gw.chat()).status_code == 200
