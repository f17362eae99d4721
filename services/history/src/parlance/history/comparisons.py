"""Comparisons (a user's pick between two sibling answers, issue 16) and implicit feedback (a
weak signal such as a re-asked question, issue 18): their rules and their queries.

A comparison is one row per pair of answers: picking again replaces the earlier pick, so a
retried or changed click never counts twice. The models are copied from the answers when the
pick is made, so the report and the export need no join to name them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy import or_, select

from parlance.common.errors import InvalidArgument, NotFound
from parlance.history import models, tree
from parlance.history.domain import (
    ComparisonRecord,
    ConversationRecord,
    ImplicitFeedback,
    ImplicitSignal,
    MessageRecord,
)
from parlance.history.repository import HistoryRepository
from parlance.history.text_checks import check_text, check_token

# -- rules -----------------------------------------------------------------------------------


def check_comparison_ids(chosen_id: str, rejected_id: str) -> None:
    for value, param in ((chosen_id, "chosen_message_id"), (rejected_id, "rejected_message_id")):
        if not value:
            raise InvalidArgument(f"{param} is required", param=param)
        check_text(value, param)
    if chosen_id == rejected_id:
        raise InvalidArgument(
            "chosen_message_id and rejected_message_id must be different answers",
            param="rejected_message_id",
        )


def check_pair(conversation_id: str, chosen: MessageRecord, rejected: MessageRecord) -> None:
    """Both generated answers of the conversation, replying to the same message."""
    for record, param in ((chosen, "chosen_message_id"), (rejected, "rejected_message_id")):
        if record.conversation_id != conversation_id:
            raise NotFound(f"message {record.id!r} not found", param=param)
        if record.role != "assistant" or not record.generated:
            raise InvalidArgument(
                f"message {record.id!r} is not an answer the gateway generated", param=param
            )
    if chosen.parent_id is None or chosen.parent_id != rejected.parent_id:
        raise InvalidArgument(
            "the two answers are not siblings (they do not reply to the same message)",
            param="rejected_message_id",
        )


def check_implicit(feedback: ImplicitFeedback) -> None:
    if not feedback.message_id:
        raise InvalidArgument("message_id is required", param="message_id")
    if not feedback.kind:
        raise InvalidArgument("kind is required", param="kind")
    check_text(feedback.message_id, "message_id")
    check_text(feedback.conversation_id, "conversation_id")
    check_token(feedback.kind, "kind")
    if not math.isfinite(feedback.score) or not -1.0 <= feedback.score <= 1.0:
        raise InvalidArgument("score must be a finite number within [-1, 1]", param="score")


# -- queries ---------------------------------------------------------------------------------


def _record(row: models.Comparison) -> ComparisonRecord:
    return ComparisonRecord(
        conversation_id=row.conversation_id,
        parent_id=row.parent_id,
        chosen_message_id=row.chosen_message_id,
        rejected_message_id=row.rejected_message_id,
        chosen_model=row.chosen_model,
        rejected_model=row.rejected_model,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def upsert_comparison(
    repo: HistoryRepository,
    user_id: str,
    chosen: MessageRecord,
    rejected: MessageRecord,
    now: datetime,
) -> ComparisonRecord:
    first, second = sorted((chosen.id, rejected.id))
    stmt = repo.insert_with_conflicts(models.Comparison).values(
        user_id=user_id,
        conversation_id=chosen.conversation_id,
        parent_id=chosen.parent_id,
        first_message_id=first,
        second_message_id=second,
        chosen_message_id=chosen.id,
        rejected_message_id=rejected.id,
        chosen_model=chosen.model,
        rejected_model=rejected.model,
        created_at=now,
        updated_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["first_message_id", "second_message_id"],
        set_={
            name: getattr(stmt.excluded, name)
            for name in (
                "chosen_message_id",
                "rejected_message_id",
                "chosen_model",
                "rejected_model",
                "updated_at",
            )
        },
    )
    await repo.session.execute(stmt)
    c = models.Comparison
    row = await repo.session.scalar(
        select(c).where(c.first_message_id == first, c.second_message_id == second)
    )
    assert row is not None  # written just above, in this transaction
    return _record(row)


async def latest_comparisons(
    repo: HistoryRepository, user_id: str, conversation_id: str, message_ids: Sequence[str]
) -> dict[str, ComparisonRecord]:
    """For each message of the conversation, the latest comparison it was a side of (absent:
    never compared). Read through ix_comparisons_conversation."""
    ids = list(message_ids)
    if not ids:
        return {}
    c = models.Comparison
    rows = await repo.session.scalars(
        select(c)
        .where(
            c.conversation_id == conversation_id,
            c.user_id == user_id,
            or_(c.chosen_message_id.in_(ids), c.rejected_message_id.in_(ids)),
        )
        .order_by(c.updated_at, c.id)
    )
    wanted = set(ids)
    out: dict[str, ComparisonRecord] = {}
    for row in rows:
        record = _record(row)
        for side in (record.chosen_message_id, record.rejected_message_id):
            if side in wanted:
                out[side] = record  # later rows replace earlier ones
    return out


async def conversation_comparisons(
    repo: HistoryRepository, conversation_ids: Sequence[str]
) -> dict[str, list[ComparisonRecord]]:
    """Admin (export): every comparison of these conversations."""
    out: dict[str, list[ComparisonRecord]] = {cid: [] for cid in conversation_ids}
    if not conversation_ids:
        return out
    c = models.Comparison
    rows = await repo.session.scalars(
        select(c).where(c.conversation_id.in_(list(conversation_ids))).order_by(c.id)
    )
    for row in rows:
        out[row.conversation_id].append(_record(row))
    return out


async def put_implicit_feedback(
    repo: HistoryRepository, user_id: str, feedback: ImplicitFeedback, now: datetime
) -> None:
    stmt = repo.insert_with_conflicts(models.ImplicitFeedback).values(
        message_id=feedback.message_id,
        user_id=user_id,
        kind=feedback.kind,
        score=feedback.score,
        created_at=now,
        updated_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["message_id", "user_id", "kind"],
        set_={"score": stmt.excluded.score, "updated_at": stmt.excluded.updated_at},
    )
    await repo.session.execute(stmt)


async def conversation_implicit(
    repo: HistoryRepository, conversation_ids: Sequence[str]
) -> dict[str, list[ImplicitSignal]]:
    """Admin (export): the implicit feedback of these conversations' owners on their answers."""
    out: dict[str, list[ImplicitSignal]] = {cid: [] for cid in conversation_ids}
    if not conversation_ids:
        return out
    m, i = models.Message, models.ImplicitFeedback
    rows = await repo.session.execute(
        select(m.conversation_id, i.message_id, i.kind, i.score)
        .join(m, (m.id == i.message_id) & (m.user_id == i.user_id))
        .where(m.conversation_id.in_(list(conversation_ids)))
        .order_by(i.id)
    )
    for row in rows:
        out[row.conversation_id].append(ImplicitSignal(row.message_id, row.kind, row.score))
    return out


# -- the RPCs' work, in one transaction each ---------------------------------------------------


async def record(
    repo: HistoryRepository,
    user_id: str,
    conversation_id: str,
    chosen_id: str,
    rejected_id: str,
    now: datetime,
) -> tuple[ComparisonRecord, ConversationRecord]:
    conversation = await repo.require_conversation(user_id, conversation_id, for_update=True)
    chosen = await repo.require_message(user_id, chosen_id, "chosen_message_id")
    rejected = await repo.require_message(user_id, rejected_id, "rejected_message_id")
    check_pair(conversation_id, chosen, rejected)
    comparison = await upsert_comparison(repo, user_id, chosen, rejected, now)
    # The chosen answer's branch becomes the active one (continued to its newest leaf, as a
    # branch switch does), so the page shows the pick after a reload.
    nodes = await repo.tree(user_id, conversation_id)
    leaf = tree.newest_leaf_under(nodes, chosen.id)
    await repo.update_conversation(user_id, conversation_id, active_leaf_id=leaf)
    return comparison, replace(conversation, active_leaf_id=leaf)


async def put_implicit(
    repo: HistoryRepository, user_id: str, feedback: ImplicitFeedback, now: datetime
) -> None:
    message = await repo.require_message(user_id, feedback.message_id, "message_id")
    if feedback.conversation_id is not None and message.conversation_id != feedback.conversation_id:
        raise NotFound(f"message {feedback.message_id!r} not found", param="message_id")
    if message.role != "assistant":
        raise InvalidArgument("implicit feedback is given on an answer", param="message_id")
    await put_implicit_feedback(repo, user_id, feedback, now)
