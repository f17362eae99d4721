"""Issue 14, finding 1: text a database cannot store is the caller's mistake (INVALID_ARGUMENT),
never "database unavailable", which the gateway's outbox would retry forever. Over real gRPC,
against SQLite and PostgreSQL (PostgreSQL's text type cannot hold U+0000 at all)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from parlance.common.errors import InvalidArgument
from parlance.history.text_checks import check_text
from parlance.history.v1 import history_pb2 as pb
from parlance.history.v1.history_pb2_grpc import HistoryServiceStub as Stub

NUL = "a\x00b"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _user() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


async def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def _conversation(stub: Stub, user: str) -> tuple[str, str]:
    resp = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user,
            create_if_missing=True,
            messages=[
                pb.Message(role="user", content="q"),
                pb.Message(role="assistant", content="a"),
            ],
        )
    )
    return resp.conversation.id, resp.messages[1].id


@pytest.mark.parametrize(
    "field", ["content", "model", "finish_reason", "moderation_json", "id", "parent_id", "role"]
)
async def test_nul_in_any_message_field_is_invalid_argument(stub: Stub, field: str) -> None:
    user = _user()
    conv, _ = await _conversation(stub, user)
    message = pb.Message(role="user", content="fine")
    setattr(message, field, NUL)
    call = stub.AppendMessages(
        pb.AppendMessagesRequest(user_id=user, conversation_id=conv, messages=[message])
    )
    assert await _code(call) == INVALID
    # Nothing was written, and the conversation takes the next (valid) write.
    ok = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id=conv, messages=[pb.Message(role="user", content="next")]
        )
    )
    assert [m.content for m in ok.messages] == ["next"]


async def test_nul_in_every_other_text_field_is_invalid_argument(stub: Stub) -> None:
    user = _user()
    conv, answer = await _conversation(stub, user)
    calls = [
        lambda: stub.AppendMessages(
            pb.AppendMessagesRequest(
                user_id=user,
                create_if_missing=True,
                title=NUL,
                messages=[pb.Message(role="user", content="x")],
            )
        ),
        lambda: stub.AppendMessages(
            pb.AppendMessagesRequest(
                user_id=NUL, create_if_missing=True, messages=[pb.Message(role="user", content="x")]
            )
        ),
        lambda: stub.AppendMessages(
            pb.AppendMessagesRequest(
                user_id=user, conversation_id=NUL, messages=[pb.Message(role="user", content="x")]
            )
        ),
        lambda: stub.CreateConversation(pb.CreateConversationRequest(user_id=user, title=NUL)),
        lambda: stub.CreateConversation(
            pb.CreateConversationRequest(user_id=user, conversation_id=NUL)
        ),
        lambda: stub.UpdateConversation(
            pb.UpdateConversationRequest(user_id=user, conversation_id=conv, title=NUL)
        ),
        lambda: stub.UpdateConversation(
            pb.UpdateConversationRequest(user_id=user, conversation_id=conv, active_message_id=NUL)
        ),
        lambda: stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=NUL)),
        lambda: stub.GetConversation(
            pb.GetConversationRequest(user_id=user, conversation_id=conv, message_id=NUL)
        ),
        lambda: stub.DeleteConversation(
            pb.DeleteConversationRequest(user_id=user, conversation_id=NUL)
        ),
        lambda: stub.ListConversations(pb.ListConversationsRequest(user_id=NUL)),
        lambda: stub.PutFeedback(
            pb.PutFeedbackRequest(user_id=user, message_id=answer, rating=1, comment=NUL)
        ),
        lambda: stub.PutFeedback(
            pb.PutFeedbackRequest(user_id=user, message_id=answer, rating=-1, corrected_content=NUL)
        ),
        lambda: stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id=NUL, rating=1)),
        lambda: stub.SearchMessages(pb.SearchMessagesRequest(user_id=user, query=NUL)),
    ]
    # Made one at a time: a call left unawaited after a failure would hold the channel open.
    for make_call in calls:
        assert await _code(make_call()) == INVALID
    # None of it changed the conversation.
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert got.conversation.title == "" and not got.messages[1].HasField("feedback")


def test_lone_surrogates_are_refused() -> None:
    # A Python gRPC client cannot even encode one; the check guards every other way in.
    for text in ("\ud800", "x\udfffy", "\x00"):
        with pytest.raises(InvalidArgument):
            check_text(text, "content")
    check_text("emoji \U0001f600 and accents é", "content")


async def test_a_value_the_database_refuses_is_invalid_argument(
    stub: Stub, database_url: str
) -> None:
    """A value that passes the checks but not the database (PostgreSQL's INTEGER tops out at
    2**31 - 1) is the request's fault: INVALID_ARGUMENT, not UNAVAILABLE."""
    user = _user()
    big = pb.Message(role="assistant", content="x", usage=pb.Usage(prompt_tokens=3_000_000_000))
    call = stub.AppendMessages(
        pb.AppendMessagesRequest(user_id=user, create_if_missing=True, messages=[big])
    )
    if database_url.startswith("postgresql"):
        assert await _code(call) == INVALID
    else:
        await call  # SQLite's integers are 64-bit


async def test_a_search_with_too_many_terms_is_invalid_argument(stub: Stub) -> None:
    user = _user()
    await _conversation(stub, user)
    query = "q " + " ".join(f"-word{i}" for i in range(100))
    call = stub.SearchMessages(pb.SearchMessagesRequest(user_id=user, query=query))
    assert await _code(call) == INVALID
    # A query within the bound still answers.
    await stub.SearchMessages(
        pb.SearchMessagesRequest(user_id=user, query="q " + " ".join(f"-w{i}" for i in range(30)))
    )
