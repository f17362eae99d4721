"""The history service over real gRPC, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from parlance.history.database import create_engine
from parlance.history.main import HistorySettings
from parlance.history.v1 import history_pb2 as pb
from parlance.history.v1.history_pb2_grpc import HistoryServiceStub as Stub


def _user() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


def _msg(role: str, content: str, *, id: str = "", parent_id: str | None = None) -> pb.Message:
    """parent_id None leaves it unset (after the previous message); "" asks for a new root."""
    message = pb.Message(id=id, role=role, content=content)
    if parent_id is not None:
        message.parent_id = parent_id
    return message


async def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def _path(stub: Stub, user: str, conv: str) -> list[str]:
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    return [m.id for m in got.messages]


async def _chat(stub: Stub, user: str, *contents: str, title: str = "") -> tuple[str, list[str]]:
    """A new conversation with alternating user/assistant messages; returns ids."""
    roles = ["user", "assistant"]
    resp = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user,
            create_if_missing=True,
            title=title,
            messages=[_msg(roles[i % 2], c) for i, c in enumerate(contents)],
        )
    )
    return resp.conversation.id, [m.id for m in resp.messages]


async def _count(settings: HistorySettings, sql: str, **params: object) -> int:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text(sql), params))
    finally:
        await engine.dispose()


async def test_serving_after_startup(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "parlance.history.v1.HistoryService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_create_get_and_list_with_cursor(stub: Stub) -> None:
    user = _user()
    ids = []
    for i in range(5):
        resp = await stub.CreateConversation(
            pb.CreateConversationRequest(user_id=user, title=f"chat {i}")
        )
        assert resp.conversation.id.startswith("conv_")
        ids.append(resp.conversation.id)

    # A client-supplied id is idempotent.
    first = await stub.CreateConversation(
        pb.CreateConversationRequest(user_id=user, conversation_id="conv_client", title="x")
    )
    again = await stub.CreateConversation(
        pb.CreateConversationRequest(user_id=user, conversation_id="conv_client", title="y")
    )
    assert again.conversation == first.conversation
    ids.append("conv_client")

    got = await stub.GetConversation(
        pb.GetConversationRequest(user_id=user, conversation_id=ids[0])
    )
    assert got.conversation.title == "chat 0" and not got.messages
    assert got.conversation.active_leaf_id == ""

    async def pages(limit: int, include_archived: bool = False) -> list[list[str]]:
        out, cursor = [], ""
        while True:
            page = await stub.ListConversations(
                pb.ListConversationsRequest(
                    user_id=user, limit=limit, cursor=cursor, include_archived=include_archived
                )
            )
            out.append([c.id for c in page.conversations])
            cursor = page.next_cursor
            if not cursor:
                return out

    newest_first = list(reversed(ids))
    assert await pages(2) == [newest_first[0:2], newest_first[2:4], newest_first[4:6]]
    assert await pages(0) == [newest_first]

    # Appending a message makes the oldest conversation the most recent.
    await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id=ids[0], messages=[_msg("user", "hi")]
        )
    )
    assert (await pages(4))[0][0] == ids[0]

    # Archived conversations are listed only on request.
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id=user, conversation_id=ids[1], archived=True)
    )
    assert ids[1] not in [i for page in await pages(3) for i in page]
    assert ids[1] in [i for page in await pages(3, True) for i in page]

    bad = stub.ListConversations(pb.ListConversationsRequest(user_id=user, cursor="%%%"))
    assert await _code(bad) == grpc.StatusCode.INVALID_ARGUMENT


async def test_rename_archive_delete(stub: Stub, settings: HistorySettings) -> None:
    user = _user()
    conv, (_u1, a1) = await _chat(stub, user, "hello there", "general kenobi", title="t")
    renamed = await stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id=user, conversation_id=conv, title="renamed")
    )
    assert renamed.conversation.title == "renamed" and not renamed.conversation.archived
    archived = await stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id=user, conversation_id=conv, archived=True)
    )
    assert archived.conversation.archived and archived.conversation.title == "renamed"
    unarchived = await stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id=user, conversation_id=conv, archived=False)
    )
    assert not unarchived.conversation.archived

    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id=a1, rating=1))
    assert await _count(settings, "SELECT count(*) FROM feedback WHERE message_id = :m", m=a1) == 1

    await stub.DeleteConversation(pb.DeleteConversationRequest(user_id=user, conversation_id=conv))
    get = stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert await _code(get) == grpc.StatusCode.NOT_FOUND
    again = stub.DeleteConversation(
        pb.DeleteConversationRequest(user_id=user, conversation_id=conv)
    )
    assert await _code(again) == grpc.StatusCode.NOT_FOUND
    assert (
        await _count(settings, "SELECT count(*) FROM messages WHERE conversation_id = :c", c=conv)
        == 0
    )
    assert await _count(settings, "SELECT count(*) FROM feedback WHERE message_id = :m", m=a1) == 0
    hits = await stub.SearchMessages(pb.SearchMessagesRequest(user_id=user, query="kenobi"))
    assert not hits.hits


async def test_append_chains_and_is_idempotent(stub: Stub) -> None:
    user = _user()
    request = pb.AppendMessagesRequest(
        user_id=user,
        conversation_id="conv_idem",
        create_if_missing=True,
        title="Idempotent",
        messages=[
            _msg("system", "be brief", id="msg_s"),
            _msg("user", "2+2?", id="msg_u"),
            pb.Message(
                id="msg_a",
                role="assistant",
                content="4",
                model="smol",
                usage=pb.Usage(prompt_tokens=12, completion_tokens=1),
                finish_reason="stop",
                moderation_json='{"flagged": false}',
                time_to_first_token_ms=15,
                total_time_ms=40,
            ),
        ],
    )
    first = await stub.AppendMessages(request)
    assert first.conversation.title == "Idempotent"
    assert first.conversation.active_leaf_id == "msg_a"
    assert [(m.id, m.parent_id) for m in first.messages] == [
        ("msg_s", ""),
        ("msg_u", "msg_s"),
        ("msg_a", "msg_u"),
    ]
    answer = first.messages[2]
    assert answer.usage.completion_tokens == 1 and answer.model == "smol"
    assert answer.time_to_first_token_ms == 15 and answer.total_time_ms == 40
    assert not first.messages[0].HasField("time_to_first_token_ms")

    # The same request again (an outbox retry): nothing written twice, same answer.
    second = await stub.AppendMessages(request)
    assert list(second.messages) == list(first.messages)
    assert await _path(stub, user, "conv_idem") == ["msg_s", "msg_u", "msg_a"]

    # Without a parent the next message continues the active leaf; ids are generated.
    nxt = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id="conv_idem", messages=[_msg("user", "and 3+3?")]
        )
    )
    assert nxt.messages[0].id.startswith("msg_") and nxt.messages[0].parent_id == "msg_a"

    # Another user cannot reuse a stored message id.
    other = _user()
    taken = stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=other,
            conversation_id="conv_other",
            create_if_missing=True,
            messages=[_msg("user", "x", id="msg_u")],
        )
    )
    assert await _code(taken) == grpc.StatusCode.ALREADY_EXISTS

    bad_role = stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id="conv_idem", messages=[_msg("tool", "x")]
        )
    )
    assert await _code(bad_role) == grpc.StatusCode.INVALID_ARGUMENT

    elsewhere, _ = await _chat(stub, user, "another chat")
    foreign_parent = stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user,
            conversation_id=elsewhere,
            messages=[_msg("assistant", "x", parent_id="msg_u")],
        )
    )
    assert await _code(foreign_parent) == grpc.StatusCode.INVALID_ARGUMENT

    missing = stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id="conv_nope", messages=[_msg("user", "x")]
        )
    )
    assert await _code(missing) == grpc.StatusCode.NOT_FOUND
    assert await _path(stub, user, "conv_idem") == ["msg_s", "msg_u", "msg_a", nxt.messages[0].id]


async def test_append_answers_what_a_read_returns(stub: Stub, settings: HistorySettings) -> None:
    """AppendMessages builds its answer from what it inserted, without reading it back: that
    answer (timestamps, siblings, ratings) equals what GetConversation reads afterwards."""
    user = _user()
    conv, (u1, a1) = await _chat(stub, user, "question", "first answer")
    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id=a1, rating=1))
    # A regenerated answer (a sibling of a1) and a retry of u1 and a1 in one batch, with an
    # id given twice: stored once, and the retried a1 comes back with its rating.
    appended = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user,
            conversation_id=conv,
            messages=[
                _msg("assistant", "second answer", id="msg_regen", parent_id=u1),
                _msg("assistant", "second answer", id="msg_regen", parent_id=u1),
            ],
        )
    )
    retried = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user,
            conversation_id=conv,
            messages=[_msg("user", "question", id=u1), _msg("assistant", "x", id=a1)],
        )
    )
    assert [m.id for m in appended.messages] == ["msg_regen", "msg_regen"]
    assert list(appended.messages[0].sibling_ids) == [a1, "msg_regen"]
    assert [m.rating for m in retried.messages] == [0, 1]
    assert await _count(settings, "SELECT count(*) FROM messages WHERE id = 'msg_regen'") == 1

    read = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert read.conversation == appended.conversation
    assert read.messages[-1] == appended.messages[0]
    on_a1 = await stub.GetConversation(
        pb.GetConversationRequest(user_id=user, conversation_id=conv, message_id=a1)
    )
    assert list(on_a1.messages) == list(retried.messages)


async def test_regenerate_and_edit_make_siblings(stub: Stub) -> None:
    user = _user()
    conv, (u1, a1, u2, a2) = await _chat(stub, user, "q1", "r1", "q2", "r2")

    # Regenerate: a second assistant answer under the same user message.
    regen = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id=conv, messages=[_msg("assistant", "r2 bis", parent_id=u2)]
        )
    )
    a2b = regen.messages[0].id
    assert (regen.messages[0].sibling_count, regen.messages[0].sibling_index) == (2, 2)
    assert list(regen.messages[0].sibling_ids) == [a2, a2b]
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.id for m in got.messages] == [u1, a1, u2, a2b]
    assert [(m.sibling_count, m.sibling_index) for m in got.messages] == [
        (1, 1),
        (1, 1),
        (1, 1),
        (2, 2),
    ]

    # Edit: a second user message under the edited one's parent, with its own answer.
    edit = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user,
            conversation_id=conv,
            messages=[_msg("user", "q2 edited", parent_id=a1), _msg("assistant", "r2 edited")],
        )
    )
    u2b, a2c = (m.id for m in edit.messages)
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.id for m in got.messages] == [u1, a1, u2b, a2c]
    assert (got.messages[2].sibling_count, got.messages[2].sibling_index) == (2, 2)
    assert got.conversation.active_leaf_id == a2c
    # Every message names its siblings in creation order, itself included: enough to switch
    # to a branch the caller has never read.
    assert [list(m.sibling_ids) for m in got.messages] == [[u1], [a1], [u2, u2b], [a2c]]

    # Back to the first version of q2: the path continues to its newest leaf (the regenerated
    # answer), and its first answer can be chosen explicitly.
    switched = await stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id=user, conversation_id=conv, active_message_id=u2)
    )
    assert switched.conversation.active_leaf_id == a2b
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.id for m in got.messages] == [u1, a1, u2, a2b]
    assert (got.messages[2].sibling_count, got.messages[2].sibling_index) == (2, 1)
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id=user, conversation_id=conv, active_message_id=a2)
    )
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.id for m in got.messages] == [u1, a1, u2, a2]
    assert (got.messages[3].sibling_count, got.messages[3].sibling_index) == (2, 1)
    assert list(got.messages[3].sibling_ids) == [a2, a2b]

    # Appending without a parent continues the branch now active.
    cont = await stub.AppendMessages(
        pb.AppendMessagesRequest(user_id=user, conversation_id=conv, messages=[_msg("user", "q3")])
    )
    assert cont.messages[0].parent_id == a2

    # Editing the first message: roots are siblings of each other too.
    root = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id=conv, messages=[_msg("user", "q1 edited", parent_id="")]
        )
    )
    u1b = root.messages[0].id
    assert list(root.messages[0].sibling_ids) == [u1, u1b]
    assert root.messages[0].sibling_index == 2

    unknown = stub.UpdateConversation(
        pb.UpdateConversationRequest(
            user_id=user, conversation_id=conv, active_message_id="msg_missing"
        )
    )
    assert await _code(unknown) == grpc.StatusCode.NOT_FOUND


async def test_feedback_upsert_shows_rating(stub: Stub, settings: HistorySettings) -> None:
    user = _user()
    conv, (_u1, a1) = await _chat(stub, user, "question", "answer")
    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id=a1, rating=1))
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.rating for m in got.messages] == [0, 1]

    await stub.PutFeedback(
        pb.PutFeedbackRequest(
            user_id=user, message_id=a1, rating=-1, comment="wrong", corrected_content="right"
        )
    )
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.rating for m in got.messages] == [0, -1]
    assert await _count(settings, "SELECT count(*) FROM feedback WHERE message_id = :m", m=a1) == 1
    assert (
        await _count(
            settings,
            "SELECT count(*) FROM feedback WHERE message_id = :m AND comment = 'wrong' "
            "AND corrected_content = 'right'",
            m=a1,
        )
        == 1
    )

    zero = stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id=a1, rating=0))
    assert await _code(zero) == grpc.StatusCode.INVALID_ARGUMENT
    missing = stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id="msg_x", rating=1))
    assert await _code(missing) == grpc.StatusCode.NOT_FOUND


async def test_search_highlights_and_escapes(stub: Stub) -> None:
    user = _user()
    conv, (u1, a1) = await _chat(
        stub,
        user,
        "Tell me about the <b>brown</b> fox & its friends",
        "The fox is a small omnivore. <script>alert(1)</script>",
        title="Foxes",
    )
    # Marker characters in the text cannot forge highlights.
    await _chat(stub, user, "\x01evil\x02 fox")
    resp = await stub.SearchMessages(pb.SearchMessagesRequest(user_id=user, query="fox"))
    assert {h.message_id for h in resp.hits} >= {u1, a1}
    by_id = {h.message_id: h for h in resp.hits}
    question = by_id[u1]
    assert question.conversation_id == conv and question.conversation_title == "Foxes"
    assert question.role == "user"
    assert "<mark>fox</mark>" in question.snippet
    assert "&lt;b&gt;brown&lt;/b&gt;" in question.snippet and "&amp;" in question.snippet
    assert "<script>" not in by_id[a1].snippet and "&lt;script&gt;" in by_id[a1].snippet
    for hit in resp.hits:
        stripped = hit.snippet.replace("<mark>", "").replace("</mark>", "")
        assert "<" not in stripped and ">" not in stripped
        assert "<mark>evil" not in hit.snippet

    phrase = await stub.SearchMessages(
        pb.SearchMessagesRequest(user_id=user, query='"small omnivore"')
    )
    assert [h.message_id for h in phrase.hits] == [a1]
    limited = await stub.SearchMessages(
        pb.SearchMessagesRequest(user_id=user, query="fox", limit=1)
    )
    assert len(limited.hits) == 1
    # Query syntax errors are not the user's problem.
    odd = await stub.SearchMessages(pb.SearchMessagesRequest(user_id=user, query='AND ( "fox'))
    assert odd is not None
    empty = stub.SearchMessages(pb.SearchMessagesRequest(user_id=user, query="  "))
    assert await _code(empty) == grpc.StatusCode.INVALID_ARGUMENT


async def test_other_users_ids_are_not_found(stub: Stub) -> None:
    alice, bob = _user(), _user()
    conv, (u1, a1) = await _chat(stub, alice, "alice's secret plan", "noted", title="Secret")
    bob_conv, _ = await _chat(stub, bob, "bob's chat")
    NF = grpc.StatusCode.NOT_FOUND

    assert (
        await _code(
            stub.GetConversation(pb.GetConversationRequest(user_id=bob, conversation_id=conv))
        )
        == NF
    )
    for change in (
        {"title": "pwned"},
        {"archived": True},
        {"active_message_id": u1},
    ):
        call = stub.UpdateConversation(
            pb.UpdateConversationRequest(user_id=bob, conversation_id=conv, **change)
        )
        assert await _code(call) == NF
    # Alice's message id on Bob's own conversation is not found either.
    for message_id in (u1, a1):
        call = stub.UpdateConversation(
            pb.UpdateConversationRequest(
                user_id=bob, conversation_id=bob_conv, active_message_id=message_id
            )
        )
        assert await _code(call) == NF
        call = stub.AppendMessages(
            pb.AppendMessagesRequest(
                user_id=bob,
                conversation_id=bob_conv,
                messages=[_msg("user", "x", parent_id=message_id)],
            )
        )
        assert await _code(call) == NF
        call = stub.PutFeedback(pb.PutFeedbackRequest(user_id=bob, message_id=message_id, rating=1))
        assert await _code(call) == NF
    assert (
        await _code(
            stub.DeleteConversation(pb.DeleteConversationRequest(user_id=bob, conversation_id=conv))
        )
        == NF
    )
    call = stub.AppendMessages(
        pb.AppendMessagesRequest(user_id=bob, conversation_id=conv, messages=[_msg("user", "x")])
    )
    assert await _code(call) == NF
    # Creating under a taken id is refused without touching it.
    call = stub.CreateConversation(pb.CreateConversationRequest(user_id=bob, conversation_id=conv))
    assert await _code(call) == grpc.StatusCode.ALREADY_EXISTS
    call = stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=bob, conversation_id=conv, create_if_missing=True, messages=[_msg("user", "x")]
        )
    )
    assert await _code(call) == grpc.StatusCode.ALREADY_EXISTS

    listed = await stub.ListConversations(
        pb.ListConversationsRequest(user_id=bob, include_archived=True)
    )
    assert [c.id for c in listed.conversations] == [bob_conv]
    hits = await stub.SearchMessages(pb.SearchMessagesRequest(user_id=bob, query="secret"))
    assert not hits.hits

    # Alice's conversation is untouched.
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=alice, conversation_id=conv))
    assert got.conversation.title == "Secret" and not got.conversation.archived
    assert [m.id for m in got.messages] == [u1, a1] and [m.rating for m in got.messages] == [0, 0]
    hits = await stub.SearchMessages(pb.SearchMessagesRequest(user_id=alice, query="secret"))
    assert [h.message_id for h in hits.hits] == [u1]


async def test_concurrent_retries_store_one_message(stub: Stub) -> None:
    """An outbox and a client racing with the same ids: every call succeeds, one row results."""
    user = _user()
    request = pb.AppendMessagesRequest(
        user_id=user,
        conversation_id="conv_race",
        create_if_missing=True,
        messages=[
            _msg("user", "once", id="msg_race_u"),
            _msg("assistant", "only", id="msg_race_a"),
        ],
    )
    results = await asyncio.gather(*(stub.AppendMessages(request) for _ in range(8)))
    assert {tuple(m.id for m in r.messages) for r in results} == {("msg_race_u", "msg_race_a")}
    assert await _path(stub, user, "conv_race") == ["msg_race_u", "msg_race_a"]
    listed = await stub.ListConversations(pb.ListConversationsRequest(user_id=user))
    assert [c.id for c in listed.conversations] == ["conv_race"]
