"""New roots, paths to a message, feedback details and the training-data export, over real
gRPC against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from parlance.history.v1 import history_pb2 as pb
from parlance.history.v1.history_pb2_grpc import HistoryServiceStub as Stub


def _user() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


def _msg(role: str, content: str, *, parent_id: str | None = None, **fields: object) -> pb.Message:
    message = pb.Message(role=role, content=content, **fields)  # type: ignore[arg-type]
    if parent_id is not None:
        message.parent_id = parent_id
    return message


async def _append(stub: Stub, user: str, conv: str, *messages: pb.Message) -> list[str]:
    resp = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id=conv, create_if_missing=True, messages=list(messages)
        )
    )
    return [m.id for m in resp.messages]


async def _rate(stub: Stub, user: str, message_id: str, rating: int, **extra: str) -> None:
    await stub.PutFeedback(
        pb.PutFeedbackRequest(user_id=user, message_id=message_id, rating=rating, **extra)
    )


async def _export(stub: Stub, **fields: object) -> list[dict]:
    records: list[dict] = []
    async for batch in stub.ExportTrainingData(pb.ExportTrainingDataRequest(**fields)):  # type: ignore[arg-type]
        records.extend(json.loads(line) for line in batch.records)
    return records


CLEAN = '{"corrected_content": {"flagged": false}}'


def _answer(content: str, **fields: object) -> pb.Message:
    """An answer as the gateway stores one it generated."""
    fields.setdefault("finish_reason", "stop")
    return _msg("assistant", content, generated=True, **fields)


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def test_edit_of_the_first_message_makes_a_new_root(stub: Stub) -> None:
    user, conv = _user(), f"conv_{uuid.uuid4().hex}"
    u1, a1 = await _append(stub, user, conv, _msg("user", "q1"), _msg("assistant", "r1"))
    u1b, a1b = await _append(
        stub, user, conv, _msg("user", "q1 edited", parent_id=""), _msg("assistant", "r1b")
    )
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.id for m in got.messages] == [u1b, a1b]
    assert not got.messages[0].HasField("parent_id") and got.messages[1].parent_id == u1b
    assert (got.messages[0].sibling_count, got.messages[0].sibling_index) == (2, 2)

    # The path to a message of another branch, without switching to it.
    path = await stub.GetConversation(
        pb.GetConversationRequest(user_id=user, conversation_id=conv, message_id=u1)
    )
    assert [m.id for m in path.messages] == [u1]
    assert path.conversation.active_leaf_id == a1b
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetConversation(
            pb.GetConversationRequest(user_id=_user(), conversation_id=conv, message_id=u1)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    other = f"conv_{uuid.uuid4().hex}"
    await _append(stub, user, other, _msg("user", "elsewhere"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetConversation(
            pb.GetConversationRequest(user_id=user, conversation_id=other, message_id=a1)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_feedback_details_and_conversation_check(stub: Stub) -> None:
    user, conv = _user(), f"conv_{uuid.uuid4().hex}"
    _, a1 = await _append(stub, user, conv, _msg("user", "q"), _msg("assistant", "r"))
    await _rate(
        stub, user, a1, -1, comment="wrong", corrected_content="right", conversation_id=conv
    )
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    answer = got.messages[1]
    assert answer.rating == -1
    assert (answer.feedback.comment, answer.feedback.corrected_content) == ("wrong", "right")
    assert not got.messages[0].HasField("feedback")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _rate(stub, user, a1, 1, conversation_id="conv_other")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_export_sft_and_preference_pairs(stub: Stub) -> None:
    alice, bob = _user(), _user()
    # Alice: a good answer, a regenerated worse one, and a corrected one further down.
    conv = f"conv_{uuid.uuid4().hex}"
    _, u1, a1 = await _append(
        stub,
        alice,
        conv,
        _msg("system", "Be brief."),
        _msg("user", "Capital of France?"),
        _answer("Paris.", model="smol", moderation_json='{"flagged": false}'),
    )
    (a1b,) = await _append(stub, alice, conv, _answer("Lyon, I think.", parent_id=u1, model="big"))
    _, a2 = await _append(
        stub,
        alice,
        conv,
        _msg("user", "And of Italy?", parent_id=a1),
        _answer("Milan.", model="smol"),
    )
    await _rate(stub, alice, a1, 1)
    await _rate(stub, alice, a1b, -1)
    await _rate(stub, alice, a2, -1, corrected_content="Rome.", moderation_json=CLEAN)
    # Bob: a positively rated answer in a conversation with a flagged message is left out.
    flagged = f"conv_{uuid.uuid4().hex}"
    _, b1 = await _append(
        stub,
        bob,
        flagged,
        _msg("user", "something nasty", moderation_json='{"input": {"flagged": true}}'),
        _answer("No.", model="smol"),
    )
    await _rate(stub, bob, b1, 1)
    # Bob: an unrated conversation yields nothing.
    await _append(
        stub, bob, f"conv_{uuid.uuid4().hex}", _msg("user", "hi"), _msg("assistant", "yo")
    )

    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    sft = await _export(stub, kind=pb.EXPORT_KIND_SFT)
    assert sft == [{"messages": [*prompt, {"role": "assistant", "content": "Paris."}]}]

    pairs = await _export(stub, kind=pb.EXPORT_KIND_PREFERENCE)
    sibling_pair = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Lyon, I think."}],
    }
    corrected_pair = {
        "prompt": [
            *prompt,
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        "chosen": [{"role": "assistant", "content": "Rome."}],
        "rejected": [{"role": "assistant", "content": "Milan."}],
    }
    assert sorted(map(json.dumps, pairs)) == sorted(map(json.dumps, [sibling_pair, corrected_pair]))
    everything = await _export(stub)
    assert len(everything) == 3 and sft[0] in everything

    # Filters: the model (either side of a pair), and the time window.
    assert await _export(stub, kind=pb.EXPORT_KIND_PREFERENCE, model="big") == [sibling_pair]
    assert await _export(stub, model="nobody") == []
    now = datetime.now(UTC)
    assert await _export(stub, since=_ts(now + timedelta(minutes=1))) == []
    assert (
        len(
            await _export(
                stub, since=_ts(now - timedelta(hours=1)), until=_ts(now + timedelta(minutes=1))
            )
        )
        == 3
    )
    assert await _export(stub, until=_ts(now - timedelta(hours=1))) == []
    # The removed conversation disappears from the export with its feedback.
    await stub.DeleteConversation(pb.DeleteConversationRequest(user_id=alice, conversation_id=conv))
    assert await _export(stub) == []


async def test_export_takes_only_generated_complete_unflagged_answers(stub: Stub) -> None:
    """Issue 14, finding 2: client-written "assistant" text, cut answers (content_filter,
    cancelled), flagged or unclassified corrections and flagged feedback never reach the
    training data."""
    user = _user()
    prompt = [_msg("user", "Capital of France?")]

    async def exchange(answer: pb.Message) -> str:
        *_, answer_id = await _append(stub, user, f"conv_{uuid.uuid4().hex}", *prompt, answer)
        return answer_id

    # Each of these is rated +1 and would be an SFT record if it were a generated answer.
    written_by_client = await exchange(
        _msg("assistant", "Paris (client text).", finish_reason="stop")
    )
    filtered = await exchange(_answer("Paris, you", finish_reason="content_filter"))
    cancelled = await exchange(_answer("Par", finish_reason="cancelled"))
    flagged_answer = await exchange(_answer("Paris.", moderation_json='{"flagged": true}'))
    for answer_id in (written_by_client, filtered, cancelled, flagged_answer):
        await _rate(stub, user, answer_id, 1)
    # A good answer rated +1 with a flagged comment: the feedback is void.
    flagged_comment = await exchange(_answer("Paris."))
    await _rate(
        stub,
        user,
        flagged_comment,
        1,
        comment="x",
        moderation_json='{"comment": {"flagged": true}}',
    )
    # Corrections: flagged, and never classified, are never the chosen answer.
    flagged_fix = await exchange(_answer("Lyon."))
    await _rate(
        stub,
        user,
        flagged_fix,
        -1,
        corrected_content="profane correction",
        moderation_json='{"corrected_content": {"flagged": true}}',
    )
    unclassified_fix = await exchange(_answer("Marseille."))
    await _rate(stub, user, unclassified_fix, -1, corrected_content="unvetted correction")
    # An SFT record whose earlier assistant turn a client wrote: a trainer would learn from it.
    conv = f"conv_{uuid.uuid4().hex}"
    _, _, _, mixed = await _append(
        stub,
        user,
        conv,
        _msg("user", "hi"),
        _msg("assistant", "client-written turn", finish_reason="stop"),
        _msg("user", "and?"),
        _answer("generated turn"),
    )
    await _rate(stub, user, mixed, 1)
    assert await _export(stub) == []

    # The control: a generated, complete answer with a clean correction is exported.
    good = await exchange(_answer("Lyon."))
    await _rate(stub, user, good, -1, corrected_content="Paris.", moderation_json=CLEAN)
    assert await _export(stub) == [
        {
            "prompt": [{"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}],
        }
    ]
