"""The history service's behaviour, independent of gRPC: validation, transactions and the
rules of the message tree. The servicer converts protos and calls into this class."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parlance.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ParlanceError,
    Unavailable,
)
from parlance.history import comparisons, export, metrics, report, tree
from parlance.history.cursor import decode_cursor, encode_cursor
from parlance.history.domain import (
    ROLES,
    ComparisonRecord,
    ConversationPage,
    ConversationRecord,
    ConversationUpdate,
    ExportFilter,
    ExportMessage,
    Feedback,
    FeedbackRecord,
    ImplicitFeedback,
    ImplicitSignal,
    MessageRecord,
    MessageView,
    ModelReport,
    NewMessage,
    ReportFilter,
    SearchHitRecord,
    TreeNode,
    new_conversation_id,
    new_message_id,
    utcnow,
)
from parlance.history.repository import HistoryRepository
from parlance.history.search_text import MAX_QUERY_TERMS, count_terms
from parlance.history.text_checks import check_text, check_token

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Conversations read per export transaction: bounds memory and transaction length.
EXPORT_BATCH = 200


def _required(value: str, param: str) -> str:
    if not value:
        raise InvalidArgument(f"{param} is required", param=param)
    return value


# SQLSTATE classes of errors that the request's values caused (data exception, integrity
# constraint violation, program limit exceeded): retrying the same request cannot succeed.
_INVALID_SQLSTATE_CLASSES = ("22", "23", "54")


def _sqlstate(exc: DBAPIError) -> str:
    """The PostgreSQL SQLSTATE behind a driver error ("" when there is none, as on SQLite).
    asyncpg's errors reach SQLAlchemy wrapped in its adapter's generic Error class, so the
    code is read from the adapter or from the asyncpg exception it wraps."""
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


def _caused_by_values(exc: DBAPIError) -> bool:
    # asyncpg refuses some values before sending them (an integer out of the column's range)
    # with its DataError, a ValueError, which carries no SQLSTATE.
    return (
        isinstance(exc, DataError)
        or isinstance(getattr(exc.orig, "__cause__", None), ValueError)
        or _sqlstate(exc).startswith(_INVALID_SQLSTATE_CLASSES)
    )


def _check_message(message: NewMessage, i: int) -> None:
    for name in ("id", "parent_id", "role", "content", "model", "finish_reason", "moderation_json"):
        check_text(getattr(message, name), f"messages[{i}].{name}")
    check_token(message.intent, f"messages[{i}].intent")


def _check_append(
    user_id: str,
    conversation_id: str,
    messages: list[NewMessage],
    create_if_missing: bool,
    title: str,
) -> None:
    _required(user_id, "user_id")
    if not conversation_id and not create_if_missing:
        raise InvalidArgument("conversation_id is required", param="conversation_id")
    if not messages:
        raise InvalidArgument("messages must not be empty", param="messages")
    _check_texts(user_id=user_id, conversation_id=conversation_id, title=title)
    for i, message in enumerate(messages):
        _check_message(message, i)
        if message.role not in ROLES:
            raise InvalidArgument(
                f"role must be one of {sorted(ROLES)}, got {message.role!r}",
                param=f"messages[{i}].role",
            )


def _check_texts(**fields: str | None) -> None:
    """Every text field of a request, ids included (see text_checks)."""
    for param, value in fields.items():
        check_text(value, param)


def _limit(value: int) -> int:
    return DEFAULT_LIMIT if value <= 0 else min(value, MAX_LIMIT)


async def _views(
    repo: HistoryRepository,
    user_id: str,
    conversation_id: str,
    nodes: dict[str, TreeNode],
    message_ids: list[str],
) -> list[MessageView]:
    """The messages with their siblings (counted over the whole tree `nodes`), rating and
    comparison."""
    records = await repo.messages(user_id, message_ids)
    feedback = await repo.feedback(user_id, message_ids)
    compared = await comparisons.latest_comparisons(repo, user_id, conversation_id, message_ids)
    return _assemble_views(nodes, records, feedback, message_ids, compared)


def _assemble_views(
    nodes: dict[str, TreeNode],
    records: dict[str, MessageRecord],
    feedback: dict[str, FeedbackRecord],
    message_ids: list[str],
    compared: dict[str, ComparisonRecord] | None = None,
) -> list[MessageView]:
    sibling_ids = tree.siblings(nodes.values())
    compared = compared or {}
    return [
        MessageView(
            message=records[message_id],
            sibling_ids=sibling_ids.get(message_id, (message_id,)),
            rating=feedback[message_id].rating if message_id in feedback else 0,
            feedback=feedback.get(message_id),
            comparison=compared.get(message_id),
        )
        for message_id in message_ids
    ]


def _new_record(
    user_id: str,
    conversation_id: str,
    message_id: str,
    parent_id: str | None,
    message: NewMessage,
    created_at: datetime,
) -> MessageRecord:
    return MessageRecord(
        id=message_id,
        conversation_id=conversation_id,
        parent_id=parent_id,
        user_id=user_id,
        role=message.role,
        content=message.content,
        model=message.model,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        finish_reason=message.finish_reason,
        moderation_json=message.moderation_json,
        ttft_ms=message.ttft_ms,
        total_ms=message.total_ms,
        created_at=created_at,
        generated=message.generated and message.role == "assistant",
        # Only a user message has an intent (dropped elsewhere, like `generated`).
        intent=message.intent if message.role == "user" else "",
        flagged=export.is_flagged(message.moderation_json),
    )


async def _append_target(
    repo: HistoryRepository, user_id: str, target_id: str, create_if_missing: bool, title: str
) -> tuple[ConversationRecord, dict[str, TreeNode]]:
    """The conversation an append writes to (created when asked) and its tree."""
    conversation = await repo.conversation_by_id(target_id, for_update=True)
    if conversation is not None and conversation.user_id != user_id:
        if create_if_missing:
            raise AlreadyExists(f"conversation id {target_id!r} is taken", param="conversation_id")
        conversation = None  # someone else's reads as not found
    if conversation is not None:
        return conversation, await repo.tree(user_id, target_id)
    if not create_if_missing:
        raise NotFound(f"conversation {target_id!r} not found", param="conversation_id")
    now = utcnow()
    # The user exists once it has a conversation (a foreign key says so).
    await repo.ensure_user(user_id, now)
    return await repo.add_conversation(user_id, target_id, title, now), {}


async def _parent_of(
    repo: HistoryRepository,
    user_id: str,
    message: NewMessage,
    previous: str | None,
    nodes: dict[str, TreeNode],
    i: int,
) -> str | None:
    """Unset: after the previous message; "": a new root; an id: a branch below it."""
    parent_id = previous if message.parent_id is None else (message.parent_id or None)
    if parent_id is not None and parent_id not in nodes:
        # Unknown (or someone else's) reads as not found; the caller's own message in another
        # conversation is a malformed request.
        param = f"messages[{i}].parent_id"
        await repo.require_message(user_id, parent_id, param)
        raise InvalidArgument(
            f"parent {parent_id!r} is not a message of this conversation", param=param
        )
    return parent_id


@dataclass(frozen=True, slots=True)
class _ExportBatch:
    """One export transaction's read: conversation ids and, by conversation, their rows."""

    ids: list[str]
    messages: dict[str, list[ExportMessage]]
    comparisons: dict[str, list[ComparisonRecord]]
    implicit: dict[str, list[ImplicitSignal]]


class HistoryServing:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @asynccontextmanager
    async def _transaction(self, operation: str) -> AsyncIterator[HistoryRepository]:
        try:
            async with self._sessions() as session, session.begin():
                yield HistoryRepository(session)
        except (ParlanceError, IntegrityError):
            raise
        except DBAPIError as exc:
            if _caused_by_values(exc):
                # The request's own values (text the database cannot store, a number out of
                # range): the same request would fail forever, so it is neither "unavailable"
                # nor a database error.
                log.warning("database refused a value in %s: %s", operation, _sqlstate(exc))
                raise InvalidArgument("the database cannot store a value of this request") from exc
            metrics.DATABASE_ERRORS.labels(operation, type(exc).__name__).inc()
            log.warning("database unavailable in %s: %s", operation, type(exc).__name__)
            raise Unavailable("database unavailable") from exc
        except (OSError, TimeoutError) as exc:
            # Connection refused, dropped, timed out, locked: the caller may retry.
            metrics.DATABASE_ERRORS.labels(operation, type(exc).__name__).inc()
            log.warning("database unavailable in %s: %s", operation, type(exc).__name__)
            raise Unavailable("database unavailable") from exc
        except SQLAlchemyError as exc:
            metrics.DATABASE_ERRORS.labels(operation, type(exc).__name__).inc()
            raise

    async def _run(self, operation: str, work: Callable[[HistoryRepository], Awaitable[T]]) -> T:
        """Runs work in one transaction, once more after a unique-key race: two requests that
        create the same user, conversation or message id; the retry sees the winner's row."""
        for attempt in (1, 2):
            try:
                async with self._transaction(operation) as repo:
                    return await work(repo)
            except IntegrityError as exc:
                if attempt == 2:
                    # Not a race (the retry saw the winner's row and still conflicts): the
                    # request contradicts stored data, and retrying it cannot help.
                    metrics.DATABASE_ERRORS.labels(operation, "IntegrityError").inc()
                    raise InvalidArgument("the write conflicts with stored data") from exc
        raise AssertionError("unreachable")

    # -- conversations ---------------------------------------------------------------------

    async def create_conversation(
        self, user_id: str, conversation_id: str, title: str
    ) -> ConversationRecord:
        _required(user_id, "user_id")
        _check_texts(user_id=user_id, conversation_id=conversation_id)
        check_text(title, "title")

        async def work(repo: HistoryRepository) -> ConversationRecord:
            now = utcnow()
            await repo.ensure_user(user_id, now)
            if conversation_id:
                existing = await repo.conversation_by_id(conversation_id)
                if existing is not None:
                    if existing.user_id == user_id:
                        return existing
                    raise AlreadyExists(
                        f"conversation id {conversation_id!r} is taken", param="conversation_id"
                    )
            return await repo.add_conversation(
                user_id, conversation_id or new_conversation_id(), title, now
            )

        return await self._run("create_conversation", work)

    async def get_conversation(
        self, user_id: str, conversation_id: str, message_id: str | None = None
    ) -> tuple[ConversationRecord, list[MessageView], tuple[str, ...]]:
        """The active branch, or with message_id the path from the root down to it."""
        _required(user_id, "user_id")
        _required(conversation_id, "conversation_id")
        _check_texts(user_id=user_id, conversation_id=conversation_id, message_id=message_id)

        async def work(
            repo: HistoryRepository,
        ) -> tuple[ConversationRecord, list[MessageView], tuple[str, ...]]:
            conversation = await repo.require_conversation(user_id, conversation_id)
            nodes = await repo.tree(user_id, conversation_id)
            leaf = conversation.active_leaf_id
            if message_id is not None:
                if message_id not in nodes:
                    await repo.require_message(user_id, message_id, "message_id")
                    raise InvalidArgument(
                        "the message belongs to another conversation", param="message_id"
                    )
                leaf = message_id
            path = tree.path_to(nodes, leaf)
            intents = await repo.conversation_intents(user_id, [conversation_id])
            return (
                conversation,
                await _views(repo, user_id, conversation_id, nodes, path),
                intents.get(conversation_id, ()),
            )

        return await self._run("get_conversation", work)

    async def list_conversations(
        self, user_id: str, limit: int, cursor: str, include_archived: bool, intent: str = ""
    ) -> ConversationPage:
        _required(user_id, "user_id")
        _check_texts(user_id=user_id, cursor=cursor)
        check_token(intent, "intent")
        after = decode_cursor(cursor) if cursor else None
        page_size = _limit(limit)

        async def work(repo: HistoryRepository) -> ConversationPage:
            # One row more than asked tells whether another page follows.
            rows = await repo.list_conversations(
                user_id,
                limit=page_size + 1,
                include_archived=include_archived,
                after=after,
                intent=intent,
            )
            page = rows[:page_size]
            next_cursor = encode_cursor(page[-1]) if len(rows) > page_size else ""
            intents = await repo.conversation_intents(user_id, [c.id for c in page])
            return ConversationPage(conversations=page, next_cursor=next_cursor, intents=intents)

        return await self._run("list_conversations", work)

    async def update_conversation(
        self, user_id: str, conversation_id: str, change: ConversationUpdate
    ) -> tuple[ConversationRecord, tuple[str, ...]]:
        """The conversation as changed, with its intents (as a read gives them)."""
        _required(user_id, "user_id")
        _required(conversation_id, "conversation_id")
        _check_texts(
            user_id=user_id,
            conversation_id=conversation_id,
            title=change.title,
            active_message_id=change.active_message_id,
        )

        async def work(repo: HistoryRepository) -> tuple[ConversationRecord, tuple[str, ...]]:
            await repo.require_conversation(user_id, conversation_id, for_update=True)
            values: dict[str, object] = {}
            if change.title is not None:
                values["title"] = change.title
            if change.archived is not None:
                values["archived"] = change.archived
            if change.active_message_id is not None:
                message = await repo.require_message(
                    user_id, change.active_message_id, "active_message_id"
                )
                if message.conversation_id != conversation_id:
                    raise InvalidArgument(
                        "the message belongs to another conversation", param="active_message_id"
                    )
                nodes = await repo.tree(user_id, conversation_id)
                values["active_leaf_id"] = tree.newest_leaf_under(nodes, message.id)
            await repo.update_conversation(user_id, conversation_id, **values)
            intents = await repo.conversation_intents(user_id, [conversation_id])
            return (
                await repo.require_conversation(user_id, conversation_id),
                intents.get(conversation_id, ()),
            )

        return await self._run("update_conversation", work)

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        _required(user_id, "user_id")
        _required(conversation_id, "conversation_id")
        _check_texts(user_id=user_id, conversation_id=conversation_id)

        async def work(repo: HistoryRepository) -> None:
            await repo.require_conversation(user_id, conversation_id, for_update=True)
            await repo.delete_conversation(user_id, conversation_id)

        await self._run("delete_conversation", work)

    # -- messages --------------------------------------------------------------------------

    async def append_messages(
        self,
        user_id: str,
        conversation_id: str,
        messages: list[NewMessage],
        *,
        create_if_missing: bool,
        title: str,
    ) -> tuple[ConversationRecord, list[MessageView]]:
        _check_append(user_id, conversation_id, messages, create_if_missing, title)
        target_id = conversation_id or new_conversation_id()
        appended_roles: list[str] = []

        async def work(repo: HistoryRepository) -> tuple[ConversationRecord, list[MessageView]]:
            # Every statement here runs on each stored exchange, the hottest write path under
            # load: one read per kind of row, one INSERT for the batch, and no read-back of what
            # this transaction wrote (the records are built from the values it inserted).
            appended_roles.clear()
            conversation, nodes = await _append_target(
                repo, user_id, target_id, create_if_missing, title
            )
            existing = await repo.messages_any_user([m.id for m in messages if m.id])
            records: dict[str, MessageRecord] = {}
            new_records: list[MessageRecord] = []
            out_ids: list[str] = []
            previous: str | None = conversation.active_leaf_id
            last_created: datetime | None = None
            for i, message in enumerate(messages):
                # Retried: stored before, or earlier in this same batch.
                stored = (
                    (existing.get(message.id) or records.get(message.id)) if message.id else None
                )
                if stored is not None:
                    if stored.user_id != user_id or stored.conversation_id != target_id:
                        raise AlreadyExists(
                            f"message id {message.id!r} is taken", param=f"messages[{i}].id"
                        )
                    # A retried append: the stored message stands, the chain goes on from it.
                    records[stored.id] = stored
                    out_ids.append(stored.id)
                    previous = stored.id
                    continue
                parent_id = await _parent_of(repo, user_id, message, previous, nodes, i)
                message_id = message.id or new_message_id()
                # Strictly increasing within a batch so that creation order is never a tie.
                created_at = utcnow()
                if last_created is not None and created_at <= last_created:
                    created_at = last_created + timedelta(microseconds=1)
                last_created = created_at
                record = _new_record(user_id, target_id, message_id, parent_id, message, created_at)
                new_records.append(record)
                records[message_id] = record
                nodes[message_id] = TreeNode(message_id, parent_id, created_at)
                appended_roles.append(message.role)
                out_ids.append(message_id)
                previous = message_id
            await repo.add_messages(new_records)
            if new_records:
                assert last_created is not None  # set with the first new record
                await repo.update_conversation(
                    user_id, target_id, updated_at=last_created, active_leaf_id=out_ids[-1]
                )
                conversation = replace(
                    conversation, updated_at=last_created, active_leaf_id=out_ids[-1]
                )
            retried = [message_id for message_id in out_ids if message_id in existing]
            feedback = await repo.feedback(user_id, retried) if retried else {}
            return conversation, _assemble_views(nodes, records, feedback, out_ids)

        result = await self._run("append_messages", work)
        for role in appended_roles:
            metrics.MESSAGES_APPENDED.labels(role).inc()
        return result

    # -- feedback and search ---------------------------------------------------------------

    async def put_feedback(self, user_id: str, feedback: Feedback) -> datetime:
        """Stores the caller's feedback on one of their answers; returns when it was stored."""
        _required(user_id, "user_id")
        _required(feedback.message_id, "message_id")
        if feedback.rating not in (1, -1):
            raise InvalidArgument("rating must be +1 or -1", param="rating")
        _check_texts(
            user_id=user_id,
            message_id=feedback.message_id,
            conversation_id=feedback.conversation_id,
            comment=feedback.comment,
            corrected_content=feedback.corrected_content,
            moderation_json=feedback.moderation_json,
        )

        async def work(repo: HistoryRepository) -> datetime:
            now = utcnow()
            message = await repo.require_message(user_id, feedback.message_id, "message_id")
            if (
                feedback.conversation_id is not None
                and message.conversation_id != feedback.conversation_id
            ):
                raise NotFound(f"message {feedback.message_id!r} not found", param="message_id")
            if message.role != "assistant":
                # A rating or a correction trains on an answer; on a question it means nothing
                # and the export would pair it with nothing.
                raise InvalidArgument(
                    f"feedback is given on answers; {feedback.message_id!r} is a "
                    f"{message.role} message",
                    param="message_id",
                )
            await repo.put_feedback(user_id, feedback, now)
            return now

        return await self._run("put_feedback", work)

    async def search_messages(self, user_id: str, query: str, limit: int) -> list[SearchHitRecord]:
        _required(user_id, "user_id")
        _check_texts(user_id=user_id, query=query)
        query = query.strip()
        if not query:
            raise InvalidArgument("query is required", param="query")
        if count_terms(query) > MAX_QUERY_TERMS:
            # Each term is a node of the database's query tree; past a bound the databases
            # fail (SQLite's expression depth, PostgreSQL's stack) instead of answering.
            raise InvalidArgument(f"the query has more than {MAX_QUERY_TERMS} terms", param="query")

        async def work(repo: HistoryRepository) -> list[SearchHitRecord]:
            return await repo.search(user_id, query, _limit(limit))

        return await self._run("search_messages", work)

    # -- comparisons, implicit feedback and the model report ---------------------------------

    async def record_comparison(
        self, user_id: str, conversation_id: str, chosen_id: str, rejected_id: str
    ) -> tuple[ComparisonRecord, ConversationRecord]:
        _required(user_id, "user_id")
        _required(conversation_id, "conversation_id")
        _check_texts(user_id=user_id, conversation_id=conversation_id)
        comparisons.check_comparison_ids(chosen_id, rejected_id)

        async def work(repo: HistoryRepository) -> tuple[ComparisonRecord, ConversationRecord]:
            return await comparisons.record(
                repo, user_id, conversation_id, chosen_id, rejected_id, utcnow()
            )

        result = await self._run("record_comparison", work)
        metrics.COMPARISONS_RECORDED.inc()
        return result

    async def put_implicit_feedback(self, user_id: str, feedback: ImplicitFeedback) -> None:
        _required(user_id, "user_id")
        _check_texts(user_id=user_id)
        comparisons.check_implicit(feedback)

        async def work(repo: HistoryRepository) -> None:
            await comparisons.put_implicit(repo, user_id, feedback, utcnow())

        await self._run("put_implicit_feedback", work)

    async def model_report(self, flt: ReportFilter) -> ModelReport:
        check_token(flt.intent, "intent")

        async def work(repo: HistoryRepository) -> ModelReport:
            return await report.model_report(repo, flt)

        return await self._run("model_report", work)

    # -- export ----------------------------------------------------------------------------

    async def export_training_data(self, flt: ExportFilter) -> AsyncIterator[list[str]]:
        """JSON records, a batch of conversations at a time, each batch its own transaction
        (a long export never holds one open)."""
        check_token(flt.intent, "intent")
        after = ""
        while True:

            async def work(repo: HistoryRepository, after: str = after) -> _ExportBatch:
                ids = await repo.export_conversation_ids(flt, after, EXPORT_BATCH)
                implicit = (
                    await comparisons.conversation_implicit(repo, ids)
                    if flt.include_implicit
                    else {}
                )
                return _ExportBatch(
                    ids,
                    await repo.export_messages(ids),
                    await comparisons.conversation_comparisons(repo, ids),
                    implicit,
                )

            batch = await self._run("export_training_data", work)
            ids = batch.ids
            lines = [
                json.dumps(record, ensure_ascii=False, separators=(",", ":"))
                for conversation_id in ids
                for record in export.records(
                    batch.messages[conversation_id],
                    flt,
                    batch.comparisons.get(conversation_id, ()),
                    batch.implicit.get(conversation_id, ()),
                )
            ]
            if lines:
                metrics.EXPORT_RECORDS.inc(len(lines))
                yield lines
            if len(ids) < EXPORT_BATCH:
                return
            after = ids[-1]
