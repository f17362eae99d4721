"""Comparisons, implicit feedback, intents and the model report (issues 16, 17, 18), over real
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


def _conv() -> str:
    return f"conv_{uuid.uuid4().hex}"


def _msg(role: str, content: str, *, parent_id: str | None = None, **fields: object) -> pb.Message:
    message = pb.Message(role=role, content=content, **fields)  # type: ignore[arg-type]
    if parent_id is not None:
        message.parent_id = parent_id
    return message


def _answer(content: str, **fields: object) -> pb.Message:
    fields.setdefault("finish_reason", "stop")
    return _msg("assistant", content, generated=True, **fields)


async def _append(stub: Stub, user: str, conv: str, *messages: pb.Message) -> list[str]:
    resp = await stub.AppendMessages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id=conv, create_if_missing=True, messages=list(messages)
        )
    )
    return [m.id for m in resp.messages]


async def _two_answers(
    stub: Stub, user: str, conv: str, question: str = "Capital of France?", **q: object
) -> tuple[str, str, str]:
    """A question with two sibling answers (as a side-by-side comparison stores them)."""
    u, a = await _append(stub, user, conv, _msg("user", question, **q), _answer("A", model="m1"))
    (b,) = await _append(stub, user, conv, _answer("B", model="m2", parent_id=u))
    return u, a, b


def _compare(user: str, conv: str, chosen: str, rejected: str) -> pb.RecordComparisonRequest:
    return pb.RecordComparisonRequest(
        user_id=user, conversation_id=conv, chosen_message_id=chosen, rejected_message_id=rejected
    )


async def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def _export(stub: Stub, **fields: object) -> list[dict]:
    records: list[dict] = []
    async for batch in stub.ExportTrainingData(pb.ExportTrainingDataRequest(**fields)):  # type: ignore[arg-type]
        records.extend(json.loads(line) for line in batch.records)
    return records


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def test_comparison_is_stored_shown_and_replaced_by_a_later_pick(stub: Stub) -> None:
    user, conv = _user(), _conv()
    u, a, b = await _two_answers(stub, user, conv)
    # The active branch is b (the newest); picking a makes a's branch active.
    first = await stub.RecordComparison(_compare(user, conv, a, b))
    c = first.comparison
    assert (c.parent_id, c.chosen_message_id, c.rejected_message_id) == (u, a, b)
    assert (c.chosen_model, c.rejected_model) == ("m1", "m2")
    assert first.conversation.active_leaf_id == a
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conv))
    assert [m.id for m in got.messages] == [u, a]
    assert not got.messages[0].HasField("comparison")
    assert (got.messages[1].comparison.chosen, got.messages[1].comparison.peer_id) == (True, b)
    other_side = await stub.GetConversation(
        pb.GetConversationRequest(user_id=user, conversation_id=conv, message_id=b)
    )
    assert (
        other_side.messages[1].comparison.chosen,
        other_side.messages[1].comparison.peer_id,
    ) == (
        False,
        a,
    )
    # Idempotent, and the latest pick of the pair wins (one row, not two).
    await stub.RecordComparison(_compare(user, conv, a, b))
    again = await stub.RecordComparison(_compare(user, conv, b, a))
    assert again.comparison.chosen_message_id == b
    assert again.comparison.created_at == c.created_at
    assert again.conversation.active_leaf_id == b
    report = await stub.GetModelReport(pb.GetModelReportRequest())
    assert [(r.chosen_model, r.rejected_model, r.count) for r in report.comparisons] == [
        ("m2", "m1", 1)
    ]
    # Deleting the conversation deletes its comparisons.
    await stub.DeleteConversation(pb.DeleteConversationRequest(user_id=user, conversation_id=conv))
    assert list((await stub.GetModelReport(pb.GetModelReportRequest())).comparisons) == []


async def test_comparison_refusals(stub: Stub) -> None:
    user, conv = _user(), _conv()
    u, a, b = await _two_answers(stub, user, conv)
    (client_text,) = await _append(stub, user, conv, _msg("assistant", "typed", parent_id=u))
    _, deeper = await _append(stub, user, conv, _msg("user", "more", parent_id=a), _answer("C"))
    bad = grpc.StatusCode.INVALID_ARGUMENT
    missing = grpc.StatusCode.NOT_FOUND
    cases = [
        (_compare(user, conv, a, a), bad),  # the same answer twice
        (_compare(user, conv, a, u), bad),  # a user message
        (_compare(user, conv, a, client_text), bad),  # an answer the gateway did not generate
        (_compare(user, conv, a, deeper), bad),  # not siblings
        (_compare(user, conv, a, ""), bad),
        (_compare(user, conv, a, "msg_unknown"), missing),
        (_compare(_user(), conv, a, b), missing),  # another user's conversation and answers
        (_compare(user, "conv_unknown", a, b), missing),
    ]
    for request, code in cases:
        assert await _code(stub.RecordComparison(request)) == code, request
    # The caller's own answers in another of its conversations read as not found there.
    conv2 = _conv()
    _, a2, b2 = await _two_answers(stub, user, conv2)
    assert await _code(stub.RecordComparison(_compare(user, conv, a2, b2))) == missing
    # Another user, with an own conversation, names someone else's answers: not found.
    mallory, conv3 = _user(), _conv()
    await _two_answers(stub, mallory, conv3)
    assert await _code(stub.RecordComparison(_compare(mallory, conv3, a, b))) == missing
    assert list((await stub.GetModelReport(pb.GetModelReportRequest())).comparisons) == []


async def test_export_comparison_pairs_and_implicit_rows_only_when_asked(stub: Stub) -> None:
    user = _user()
    conv = _conv()
    _, a, b = await _two_answers(stub, user, conv, intent="geo")
    await stub.RecordComparison(_compare(user, conv, a, b))
    # A comparison whose chosen answer was flagged by output moderation is never exported
    # (the whole conversation is left out, as for ratings).
    flagged_conv = _conv()
    fu, fa = await _append(
        stub,
        user,
        flagged_conv,
        _msg("user", "q"),
        _answer("bad", moderation_json='{"output": {"flagged": true}}'),
    )
    (fb,) = await _append(stub, user, flagged_conv, _answer("fine", parent_id=fu))
    await stub.RecordComparison(_compare(user, flagged_conv, fa, fb))
    # A comparison with a cut answer (finish reason content_filter) is not exported either.
    cut_conv = _conv()
    cu, ca = await _append(stub, user, cut_conv, _msg("user", "q2"), _answer("ok"))
    (cb,) = await _append(
        stub, user, cut_conv, _answer("cu", finish_reason="cancelled", parent_id=cu)
    )
    await stub.RecordComparison(_compare(user, cut_conv, ca, cb))
    # A re-ask right after answer b: a weak negative, exported only when asked.
    await stub.PutImplicitFeedback(
        pb.PutImplicitFeedbackRequest(user_id=user, message_id=b, kind="reask", score=0.93)
    )
    prompt = [{"role": "user", "content": "Capital of France?"}]
    pair = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "A"}],
        "rejected": [{"role": "assistant", "content": "B"}],
    }
    assert await _export(stub, kind=pb.EXPORT_KIND_PREFERENCE) == [pair]
    assert await _export(stub) == [pair]
    assert await _export(stub, kind=pb.EXPORT_KIND_SFT) == []
    # A rating that repeats the comparison is one pair, not two.
    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id=a, rating=1))
    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=user, message_id=b, rating=-1))
    assert await _export(stub, kind=pb.EXPORT_KIND_PREFERENCE) == [pair]
    weak = {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": "B"}],
        "label": False,
        "source": "reask",
        "score": 0.93,
    }
    assert await _export(stub, kind=pb.EXPORT_KIND_PREFERENCE, include_implicit=True) == [
        pair,
        weak,
    ]
    # Model and intent filters apply to both kinds of row.
    assert await _export(stub, kind=pb.EXPORT_KIND_PREFERENCE, model="m1") == [pair]
    assert await _export(
        stub, model="m2", include_implicit=True, kind=pb.EXPORT_KIND_PREFERENCE
    ) == [
        pair,
        weak,
    ]
    assert await _export(stub, include_implicit=True, intent="geo", kind=2) == [pair, weak]
    assert await _export(stub, include_implicit=True, intent="math") == []
    assert await _code(_export(stub, intent="no spaces")) == grpc.StatusCode.INVALID_ARGUMENT


async def test_implicit_feedback_rules(stub: Stub) -> None:
    user, conv = _user(), _conv()
    u, a = await _append(stub, user, conv, _msg("user", "q"), _answer("r"))

    def request(**fields: object) -> pb.PutImplicitFeedbackRequest:
        base: dict[str, object] = {"user_id": user, "message_id": a, "kind": "reask", "score": 0.9}
        return pb.PutImplicitFeedbackRequest(**{**base, **fields})  # type: ignore[arg-type]

    await stub.PutImplicitFeedback(request())
    await stub.PutImplicitFeedback(request(score=0.95, conversation_id=conv))  # replaces it
    bad, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    for fields, code in [
        ({"message_id": u}, bad),  # a question, not an answer
        ({"kind": ""}, bad),
        ({"kind": "re ask"}, bad),
        ({"score": float("nan")}, bad),
        ({"score": 1.5}, bad),
        ({"message_id": "msg_unknown"}, missing),
        ({"user_id": _user()}, missing),
        ({"conversation_id": "conv_other"}, missing),
    ]:
        assert await _code(stub.PutImplicitFeedback(request(**fields))) == code, fields
    rows = await _export(stub, include_implicit=True)
    assert [(r["source"], r["score"]) for r in rows] == [("reask", 0.95)]


async def test_intents_listed_filtered_and_validated(stub: Stub) -> None:
    user = _user()
    geo, maths, none = _conv(), _conv(), _conv()
    await _append(stub, user, geo, _msg("user", "Capital?", intent="geo"), _answer("Paris"))
    await _append(stub, user, geo, _msg("user", "2+2?", intent="math"), _answer("4"))
    await _append(stub, user, maths, _msg("user", "3+3?", intent="math"), _answer("6"))
    await _append(stub, user, none, _msg("user", "hi"), _answer("hello"))
    await _append(stub, _user(), _conv(), _msg("user", "other user", intent="geo"))

    async def listed(intent: str) -> list[tuple[str, list[str]]]:
        page = await stub.ListConversations(
            pb.ListConversationsRequest(user_id=user, intent=intent)
        )
        return [(c.id, list(c.intents)) for c in page.conversations]

    assert await listed("") == [(none, []), (maths, ["math"]), (geo, ["geo", "math"])]
    assert await listed("geo") == [(geo, ["geo", "math"])]
    assert await listed("math") == [(maths, ["math"]), (geo, ["geo", "math"])]
    assert await listed("cooking") == []
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=geo))
    assert list(got.conversation.intents) == ["geo", "math"]
    assert [m.intent for m in got.messages] == ["geo", "", "math", ""]
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(listed("x" * 65)) == bad
    assert await _code(listed("a/b")) == bad
    # Only user messages carry an intent (an answer's is not stored); a malformed one is refused.
    (answer,) = await _append(stub, user, none, _answer("x", intent="geo"))
    got = await stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=none))
    assert got.messages[-1].id == answer and got.messages[-1].intent == ""
    assert list(got.conversation.intents) == []
    assert await _code(_append(stub, user, geo, _msg("user", "x", intent="a b"))) == bad


async def test_model_report_counts(stub: Stub) -> None:
    alice, bob = _user(), _user()
    # Alice: three answers of m1 (one rated up, one down, one flagged by output moderation)
    # and one of m2, which beats an m1 answer in a comparison and was re-asked.
    c1 = _conv()
    u1, a1 = await _append(
        stub, alice, c1, _msg("user", "q1", intent="geo"), _answer("1", model="m1")
    )
    (a2,) = await _append(stub, alice, c1, _answer("2", model="m2", parent_id=u1))
    u2, a3 = await _append(
        stub, alice, c1, _msg("user", "q2", intent="math"), _answer("3", model="m1")
    )
    await _append(
        stub,
        alice,
        c1,
        _answer("4", model="m1", parent_id=u2, moderation_json='{"output": {"flagged": true}}'),
    )
    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=alice, message_id=a1, rating=1))
    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=alice, message_id=a3, rating=-1))
    await stub.RecordComparison(_compare(alice, c1, a2, a1))
    await stub.PutImplicitFeedback(
        pb.PutImplicitFeedbackRequest(user_id=alice, message_id=a2, kind="reask", score=0.9)
    )
    # Bob: one m2 answer rated up; a client-written "assistant" message is not an answer.
    _, b1 = await _append(
        stub, bob, _conv(), _msg("user", "q3", intent="geo"), _answer("5", model="m2")
    )
    await _append(stub, bob, _conv(), _msg("user", "q4"), _msg("assistant", "typed", model="m2"))
    await stub.PutFeedback(pb.PutFeedbackRequest(user_id=bob, message_id=b1, rating=1))

    def rows(resp: pb.GetModelReportResponse) -> dict[str, tuple[int, ...]]:
        return {
            r.model: (
                r.answers,
                r.rated_answers,
                r.thumbs_up,
                r.thumbs_down,
                r.flagged_answers,
                r.reasked_answers,
            )
            for r in resp.models
        }

    everything = await stub.GetModelReport(pb.GetModelReportRequest())
    assert rows(everything) == {"m1": (3, 2, 1, 1, 1, 0), "m2": (2, 1, 1, 0, 0, 1)}
    assert [(c.chosen_model, c.rejected_model, c.count) for c in everything.comparisons] == [
        ("m2", "m1", 1)
    ]
    geo = await stub.GetModelReport(pb.GetModelReportRequest(intent="geo"))
    assert rows(geo) == {"m1": (1, 1, 1, 0, 0, 0), "m2": (2, 1, 1, 0, 0, 1)}
    assert len(geo.comparisons) == 1
    maths = await stub.GetModelReport(pb.GetModelReportRequest(intent="math"))
    assert rows(maths) == {"m1": (2, 1, 0, 1, 1, 0)}
    assert list(maths.comparisons) == []
    now = datetime.now(UTC)
    later = await stub.GetModelReport(
        pb.GetModelReportRequest(since=_ts(now + timedelta(minutes=1)))
    )
    assert (list(later.models), list(later.comparisons)) == ([], [])
    window = await stub.GetModelReport(
        pb.GetModelReportRequest(
            since=_ts(now - timedelta(hours=1)), until=_ts(now + timedelta(minutes=1))
        )
    )
    assert rows(window) == rows(everything) and len(window.comparisons) == 1
    assert (
        await _code(stub.GetModelReport(pb.GetModelReportRequest(intent="a b")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
