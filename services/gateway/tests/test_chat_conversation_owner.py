"""A conversation is continued only by its owner, whichever branch is asked for; and what is
stored is what history accepts (issue 14, finding 6)."""

from __future__ import annotations

from parlance.testing.inprocess import InProcessGateway


async def test_a_new_root_in_another_users_conversation_is_404(gw: InProcessGateway) -> None:
    conversation = gw.history.create(gw.bob.user_id)
    response = await gw.chat(gw.body(conversation_id=conversation, parent_message_id=""))
    assert response.status_code == 404
    assert gw.generator.requests == []
    assert gw.history.appends == []


async def test_a_new_root_in_a_made_up_conversation_is_404(gw: InProcessGateway) -> None:
    response = await gw.chat(gw.body(conversation_id="conv_made_up", parent_message_id=""))
    assert response.status_code == 404
    assert gw.generator.requests == []


async def test_a_new_root_in_ones_own_conversation(gw: InProcessGateway) -> None:
    conversation = gw.history.create(gw.alice.user_id)
    response = await gw.chat(gw.body(conversation_id=conversation, parent_message_id=""))
    assert response.status_code == 200
    assert [m.content for m in gw.generator.requests[-1].chat.messages] == ["Hi there"]


async def test_the_developer_role_is_stored_as_system(gw: InProcessGateway) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    body = (await gw.chat(gw.body(messages=messages, store=True))).json()
    stored = gw.history.stored(body["conversation_id"])
    assert [(m.role, m.content) for m in stored][:2] == [("system", "Be brief."), ("user", "Hi")]
