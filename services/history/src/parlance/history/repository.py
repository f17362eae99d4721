"""Every query of the history service. Each one is scoped to a user: an id that belongs to
someone else reads as absent, and the `require_*` methods raise NotFound for it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, text, union, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from parlance.common.errors import NotFound
from parlance.history import models
from parlance.history.domain import (
    ConversationRecord,
    ExportFilter,
    ExportMessage,
    Feedback,
    FeedbackRecord,
    MessageRecord,
    SearchHitRecord,
    TreeNode,
)
from parlance.history.search_text import (
    MARK_END,
    MARK_START,
    mark_escaped_snippet,
    mark_snippet,
    to_fts5_query,
)


def _conversation(row: models.Conversation) -> ConversationRecord:
    return ConversationRecord(
        id=row.id,
        user_id=row.user_id,
        title=row.title,
        created_at=row.created_at,
        updated_at=row.updated_at,
        archived=row.archived,
        active_leaf_id=row.active_leaf_id,
    )


def _message(row: models.Message) -> MessageRecord:
    return MessageRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        parent_id=row.parent_id,
        user_id=row.user_id,
        role=row.role,
        content=row.content,
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        finish_reason=row.finish_reason,
        moderation_json=row.moderation_json,
        ttft_ms=row.ttft_ms,
        total_ms=row.total_ms,
        created_at=row.created_at,
        generated=row.generated,
        intent=row.intent,
        flagged=row.flagged,
    )


# SQLite: FTS5 over the copy the migration's triggers keep; snippet() marks the matches.
_SQLITE_SEARCH = text(
    """
    SELECT m.id, m.conversation_id, c.title, m.role, m.created_at,
           snippet(messages_fts, 0, :mark_start, :mark_end, '…', 24) AS snippet
    FROM messages_fts
    JOIN messages_fts_rowids r ON r.rowid = messages_fts.rowid
    JOIN messages m ON m.id = r.message_id
    JOIN conversations c ON c.id = m.conversation_id
    WHERE messages_fts MATCH :query AND m.user_id = :user_id AND c.user_id = :user_id
    ORDER BY bm25(messages_fts), m.created_at DESC
    LIMIT :limit
    """
)

# PostgreSQL: rank on the stored tsvector column (migration 0002: parsed once, on write), keep
# the top rows, and only then build their snippets: ts_headline re-parses the text, so it runs
# for `limit` rows, not for every match. The text is escaped before ts_headline, which would
# otherwise drop whatever looks like an HTML tag; entities are single tokens to its parser, so
# matching and fragments are unaffected.
_POSTGRES_SEARCH = text(
    """
    WITH q AS (SELECT websearch_to_tsquery('english'::regconfig, :query) AS q),
    top AS (
        SELECT m.id, ts_rank(m.content_tsv, q.q) AS rank
        FROM messages m
        JOIN conversations c ON c.id = m.conversation_id, q
        WHERE m.user_id = :user_id AND c.user_id = :user_id AND m.content_tsv @@ q.q
        ORDER BY rank DESC, m.created_at DESC
        LIMIT :limit
    )
    SELECT m.id, m.conversation_id, c.title, m.role, m.created_at,
           ts_headline(
               'english'::regconfig,
               replace(replace(replace(replace(replace(
                   m.content, chr(1), ''), chr(2), ''), '&', '&amp;'), '<', '&lt;'), '>', '&gt;'),
               q.q,
               'StartSel=' || :mark_start || ', StopSel=' || :mark_end
               || ', MaxFragments=2, MaxWords=24, MinWords=8, FragmentDelimiter=" … "'
           ) AS snippet
    FROM top
    JOIN messages m ON m.id = top.id
    JOIN conversations c ON c.id = m.conversation_id, q
    ORDER BY top.rank DESC, m.created_at DESC
    """
)


class HistoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def insert_with_conflicts(self, table: type[models.Base]) -> Any:
        """INSERT with ON CONFLICT support, which both backends have under the same API."""
        module = postgresql if self._dialect == "postgresql" else sqlite
        return module.insert(table)

    # -- users -----------------------------------------------------------------------------

    async def ensure_user(self, user_id: str, now: datetime) -> None:
        """Creates the user on first sight; concurrent first requests do not collide."""
        stmt = (
            self.insert_with_conflicts(models.User)
            .values(id=user_id, created_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        await self.session.execute(stmt)

    # -- conversations ---------------------------------------------------------------------

    async def conversation_by_id(
        self, conversation_id: str, *, for_update: bool = False
    ) -> ConversationRecord | None:
        """The conversation whoever owns it: callers compare user_id themselves, to tell "not
        yours" (not found) from "yours" in one query, and "taken" when creating it."""
        stmt = select(models.Conversation).where(models.Conversation.id == conversation_id)
        if for_update:
            # Serialises appends to one conversation on PostgreSQL (SQLite has one writer).
            stmt = stmt.with_for_update()
        row = await self.session.scalar(stmt)
        return _conversation(row) if row is not None else None

    async def find_conversation(
        self, user_id: str, conversation_id: str, *, for_update: bool = False
    ) -> ConversationRecord | None:
        """The user's own conversation; someone else's reads as absent."""
        record = await self.conversation_by_id(conversation_id, for_update=for_update)
        return record if record is not None and record.user_id == user_id else None

    async def require_conversation(
        self, user_id: str, conversation_id: str, *, for_update: bool = False
    ) -> ConversationRecord:
        record = await self.find_conversation(user_id, conversation_id, for_update=for_update)
        if record is None:
            raise NotFound(f"conversation {conversation_id!r} not found", param="conversation_id")
        return record

    async def add_conversation(
        self, user_id: str, conversation_id: str, title: str, now: datetime
    ) -> ConversationRecord:
        record = ConversationRecord(
            id=conversation_id,
            user_id=user_id,
            title=title,
            created_at=now,
            updated_at=now,
            archived=False,
            active_leaf_id=None,
        )
        await self.session.execute(insert(models.Conversation).values(**asdict(record)))
        return record

    async def list_conversations(
        self,
        user_id: str,
        *,
        limit: int,
        include_archived: bool,
        after: tuple[datetime, str] | None,
        intent: str = "",
    ) -> list[ConversationRecord]:
        c, m = models.Conversation, models.Message
        stmt = select(c).where(c.user_id == user_id)
        if not include_archived:
            stmt = stmt.where(c.archived.is_(False))
        if intent:
            # Served by ix_messages_user_intent (user_id, intent).
            stmt = stmt.where(
                c.id.in_(
                    select(m.conversation_id).where(
                        m.user_id == user_id, m.intent == intent, m.role == "user"
                    )
                )
            )
        if after is not None:
            updated_at, last_id = after
            stmt = stmt.where(
                or_(c.updated_at < updated_at, and_(c.updated_at == updated_at, c.id < last_id))
            )
        stmt = stmt.order_by(c.updated_at.desc(), c.id.desc()).limit(limit)
        rows = await self.session.scalars(stmt)
        return [_conversation(row) for row in rows]

    async def conversation_intents(
        self, user_id: str, conversation_ids: Sequence[str]
    ) -> dict[str, tuple[str, ...]]:
        """The distinct intents of each conversation's user messages, sorted."""
        if not conversation_ids:
            return {}
        m = models.Message
        rows = await self.session.execute(
            select(m.conversation_id, m.intent)
            .where(
                m.user_id == user_id,
                m.conversation_id.in_(list(conversation_ids)),
                m.role == "user",
                m.intent != "",
            )
            .distinct()
        )
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row.conversation_id, []).append(row.intent)
        return {cid: tuple(sorted(intents)) for cid, intents in found.items()}

    async def update_conversation(
        self, user_id: str, conversation_id: str, **values: object
    ) -> None:
        if not values:
            return
        await self.session.execute(
            update(models.Conversation)
            .where(
                models.Conversation.id == conversation_id,
                models.Conversation.user_id == user_id,
            )
            .values(**values)
        )

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        """Deletes the conversation with its messages and their feedback (explicitly, so it
        does not depend on the backend enforcing ON DELETE CASCADE)."""
        message_ids = select(models.Message.id).where(
            models.Message.conversation_id == conversation_id,
            models.Message.user_id == user_id,
        )
        await self.session.execute(
            delete(models.Feedback).where(models.Feedback.message_id.in_(message_ids))
        )
        await self.session.execute(
            delete(models.ImplicitFeedback).where(
                models.ImplicitFeedback.message_id.in_(message_ids)
            )
        )
        await self.session.execute(
            delete(models.Comparison).where(
                models.Comparison.conversation_id == conversation_id,
                models.Comparison.user_id == user_id,
            )
        )
        await self.session.execute(
            delete(models.Message).where(
                models.Message.conversation_id == conversation_id,
                models.Message.user_id == user_id,
            )
        )
        await self.session.execute(
            delete(models.Conversation).where(
                models.Conversation.id == conversation_id,
                models.Conversation.user_id == user_id,
            )
        )

    # -- messages --------------------------------------------------------------------------

    async def tree(self, user_id: str, conversation_id: str) -> dict[str, TreeNode]:
        """Every message of the conversation, without content: enough to walk the tree."""
        m = models.Message
        rows = await self.session.execute(
            select(m.id, m.parent_id, m.created_at).where(
                m.conversation_id == conversation_id, m.user_id == user_id
            )
        )
        return {
            row.id: TreeNode(id=row.id, parent_id=row.parent_id, created_at=row.created_at)
            for row in rows
        }

    async def messages(self, user_id: str, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        if not message_ids:
            return {}
        rows = await self.session.scalars(
            select(models.Message).where(
                models.Message.id.in_(list(message_ids)), models.Message.user_id == user_id
            )
        )
        return {row.id: _message(row) for row in rows}

    async def messages_any_user(self, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        """For idempotent appends only: tells a retried id from one taken by someone else."""
        if not message_ids:
            return {}
        rows = await self.session.scalars(
            select(models.Message).where(models.Message.id.in_(list(message_ids)))
        )
        return {row.id: _message(row) for row in rows}

    async def require_message(self, user_id: str, message_id: str, param: str) -> MessageRecord:
        row = await self.session.scalar(
            select(models.Message).where(
                models.Message.id == message_id, models.Message.user_id == user_id
            )
        )
        if row is None:
            raise NotFound(f"message {message_id!r} not found", param=param)
        return _message(row)

    async def add_messages(self, records: Sequence[MessageRecord]) -> None:
        """One INSERT for the batch (parents before children: foreign keys are checked at the
        end of the statement on both backends)."""
        if records:
            await self.session.execute(
                insert(models.Message), [asdict(record) for record in records]
            )

    # -- feedback --------------------------------------------------------------------------

    async def feedback(self, user_id: str, message_ids: Iterable[str]) -> dict[str, FeedbackRecord]:
        ids = list(message_ids)
        if not ids:
            return {}
        f = models.Feedback
        rows = await self.session.execute(
            select(f.message_id, f.rating, f.comment, f.corrected_content, f.updated_at).where(
                f.user_id == user_id, f.message_id.in_(ids)
            )
        )
        return {
            row.message_id: FeedbackRecord(
                rating=row.rating,
                comment=row.comment,
                corrected_content=row.corrected_content,
                updated_at=row.updated_at,
            )
            for row in rows
        }

    async def put_feedback(self, user_id: str, feedback: Feedback, now: datetime) -> None:
        stmt = self.insert_with_conflicts(models.Feedback).values(
            message_id=feedback.message_id,
            user_id=user_id,
            rating=feedback.rating,
            comment=feedback.comment,
            corrected_content=feedback.corrected_content,
            moderation_json=feedback.moderation_json,
            created_at=now,
            updated_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["message_id", "user_id"],
            set_={
                "rating": stmt.excluded.rating,
                "comment": stmt.excluded.comment,
                "corrected_content": stmt.excluded.corrected_content,
                "moderation_json": stmt.excluded.moderation_json,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        await self.session.execute(stmt)

    # -- search ----------------------------------------------------------------------------

    async def search(self, user_id: str, query: str, limit: int) -> list[SearchHitRecord]:
        params = {
            "user_id": user_id,
            "limit": limit,
            "mark_start": MARK_START,
            "mark_end": MARK_END,
        }
        if self._dialect == "postgresql":
            statement = _POSTGRES_SEARCH
            params["query"] = query
        else:
            fts_query = to_fts5_query(query)
            if not fts_query:
                return []
            statement = _SQLITE_SEARCH
            params["query"] = fts_query
        rows = await self.session.execute(
            statement.columns(created_at=models.UTCDateTime()), params
        )
        mark = mark_escaped_snippet if self._dialect == "postgresql" else mark_snippet
        return [
            SearchHitRecord(
                conversation_id=row.conversation_id,
                conversation_title=row.title,
                message_id=row.id,
                role=row.role,
                snippet=mark(row.snippet or ""),
                created_at=row.created_at,
            )
            for row in rows
        ]

    # -- export (admin: across users, each message read with its owner's feedback) ---------

    async def export_conversation_ids(
        self, flt: ExportFilter, after_id: str, limit: int
    ) -> list[str]:
        """Conversations with feedback, a comparison or (when asked) implicit feedback on an
        answer that matches the filter, in id order. A superset: export.records applies the
        filter exactly."""
        m, f, i = models.Message, models.Feedback, models.ImplicitFeedback
        rated = select(m.conversation_id).join(
            f, and_(f.message_id == m.id, f.user_id == m.user_id)
        )
        sources = [rated]
        if flt.include_implicit:
            sources.append(
                select(m.conversation_id).join(
                    i, and_(i.message_id == m.id, i.user_id == m.user_id)
                )
            )
        candidates = [self._export_answer_filter(stmt, flt, after_id) for stmt in sources] + [
            self._export_comparison_filter(flt, after_id)
        ]
        found = union(*candidates).subquery()
        stmt = select(found.c.conversation_id).order_by(found.c.conversation_id).limit(limit)
        return list(await self.session.scalars(stmt))

    @staticmethod
    def _export_answer_filter(stmt: Any, flt: ExportFilter, after_id: str) -> Any:
        m = models.Message
        stmt = stmt.where(m.role == "assistant", m.conversation_id > after_id)
        if flt.since is not None:
            stmt = stmt.where(m.created_at >= flt.since)
        if flt.until is not None:
            stmt = stmt.where(m.created_at < flt.until)
        if flt.model:
            stmt = stmt.where(m.model == flt.model)
        return stmt

    @staticmethod
    def _export_comparison_filter(flt: ExportFilter, after_id: str) -> Any:
        # The window applies to the pair's newer answer, which export.records checks.
        c = models.Comparison
        stmt = select(c.conversation_id).where(c.conversation_id > after_id)
        if flt.model:
            stmt = stmt.where(or_(c.chosen_model == flt.model, c.rejected_model == flt.model))
        return stmt

    async def export_messages(
        self, conversation_ids: Sequence[str]
    ) -> dict[str, list[ExportMessage]]:
        if not conversation_ids:
            return {}
        m, f = models.Message, models.Feedback
        rows = await self.session.execute(
            select(
                m.id,
                m.conversation_id,
                m.parent_id,
                m.role,
                m.content,
                m.model,
                m.moderation_json,
                m.created_at,
                m.finish_reason,
                m.generated,
                m.intent,
                f.rating,
                f.corrected_content,
                f.moderation_json.label("feedback_moderation_json"),
            )
            .outerjoin(f, and_(f.message_id == m.id, f.user_id == m.user_id))
            .where(m.conversation_id.in_(list(conversation_ids)))
        )
        out: dict[str, list[ExportMessage]] = {cid: [] for cid in conversation_ids}
        for row in rows:
            out[row.conversation_id].append(
                ExportMessage(
                    id=row.id,
                    parent_id=row.parent_id,
                    role=row.role,
                    content=row.content,
                    model=row.model,
                    moderation_json=row.moderation_json,
                    created_at=row.created_at,
                    rating=row.rating or 0,
                    corrected_content=row.corrected_content or "",
                    finish_reason=row.finish_reason,
                    generated=bool(row.generated),
                    feedback_moderation_json=row.feedback_moderation_json or "",
                    intent=row.intent,
                )
            )
        return out
