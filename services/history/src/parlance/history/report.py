"""The model report's counts (issue 17): per model id, its generated answers and their
feedback, and comparison outcomes by pair of models. Aggregation only, in SQL that runs on
SQLite and PostgreSQL alike; the statistics (intervals, Bradley-Terry) are the gateway's.

Each answer is joined to at most one row of feedback (unique per message and owner) and of
implicit "reask" feedback (unique per message, owner and kind), so no count is multiplied.
The time window is served by ix_messages_created and ix_comparisons_updated; the intent cut
joins the answer's parent (the question) by primary key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import aliased

from parlance.history import models
from parlance.history.domain import ComparisonCount, ModelCounts, ModelReport, ReportFilter
from parlance.history.repository import HistoryRepository


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


async def model_counts(repo: HistoryRepository, flt: ReportFilter) -> list[ModelCounts]:
    m, f, i = models.Message, models.Feedback, models.ImplicitFeedback
    stmt = (
        select(
            m.model,
            func.count(m.id).label("answers"),
            func.count(f.id).label("rated"),
            _count_if(f.rating == 1).label("up"),
            _count_if(f.rating == -1).label("down"),
            _count_if(m.flagged.is_(True)).label("flagged"),
            func.count(i.id).label("reasked"),
        )
        .outerjoin(f, and_(f.message_id == m.id, f.user_id == m.user_id))
        .outerjoin(i, and_(i.message_id == m.id, i.user_id == m.user_id, i.kind == "reask"))
        .where(m.role == "assistant", m.generated.is_(True))
        .group_by(m.model)
        .order_by(m.model)
    )
    if flt.since is not None:
        stmt = stmt.where(m.created_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(m.created_at < flt.until)
    if flt.intent:
        question = aliased(models.Message)
        stmt = stmt.join(question, question.id == m.parent_id).where(question.intent == flt.intent)
    rows = await repo.session.execute(stmt)
    return [
        ModelCounts(
            model=row.model,
            answers=int(row.answers),
            rated_answers=int(row.rated),
            thumbs_up=int(row.up),
            thumbs_down=int(row.down),
            flagged_answers=int(row.flagged),
            reasked_answers=int(row.reasked),
        )
        for row in rows
    ]


async def comparison_counts(repo: HistoryRepository, flt: ReportFilter) -> list[ComparisonCount]:
    c = models.Comparison
    stmt = (
        select(c.chosen_model, c.rejected_model, func.count(c.id).label("n"))
        .group_by(c.chosen_model, c.rejected_model)
        .order_by(c.chosen_model, c.rejected_model)
    )
    if flt.since is not None:
        stmt = stmt.where(c.updated_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(c.updated_at < flt.until)
    if flt.intent:
        question = aliased(models.Message)
        stmt = stmt.join(question, question.id == c.parent_id).where(question.intent == flt.intent)
    rows = await repo.session.execute(stmt)
    return [ComparisonCount(row.chosen_model, row.rejected_model, int(row.n)) for row in rows]


async def model_report(repo: HistoryRepository, flt: ReportFilter) -> ModelReport:
    return ModelReport(
        models=await model_counts(repo, flt), comparisons=await comparison_counts(repo, flt)
    )
