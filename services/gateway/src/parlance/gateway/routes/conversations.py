"""/v1/conversations: the chat sidebar's data (list, filtered by intent; create, get, rename,
archive, switch branch, delete), search, feedback and comparisons; the admin training-data
export (routes/admin_export.py) is included in this router. Every route maps onto one history
RPC, scoped to the caller's user: another user's id answers 404.

Every route but the export is rate-limited per key (GATEWAY_CONVERSATIONS_RPM_LIMIT, a budget
of its own beside chat's); feedback text is classified on submission and the export re-checks
each record through safety (training data is the product's next model)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from parlance.gateway import conversations_convert as convert
from parlance.gateway import conversations_protocol as cp
from parlance.gateway import errors, verdicts
from parlance.gateway.auth import Principal
from parlance.gateway.deps import State, authenticate
from parlance.gateway.headers import ResponseHeaders
from parlance.gateway.metrics import COMPARISONS_ANSWERED
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.routes import admin_export
from parlance.history.v1 import history_pb2

router = APIRouter()
router.include_router(admin_export.router)


async def conversations_rate_limit(
    request: Request, caller: Annotated[Principal, Depends(authenticate)], state: State
) -> Principal:
    """The key's requests-per-minute budget for these routes (0: unlimited)."""
    limit = state.settings.conversations_rpm_limit
    if limit <= 0:
        return caller
    try:
        decision = await state.limiter.check("conversations_rpm", caller.key_id, limit)
    except RedisUnavailable:
        raise errors.service_unavailable(
            "Rate limiting is unavailable (Redis); retry shortly.", state.settings.retry_after_s
        ) from None
    headers = ResponseHeaders.of(request)
    headers.update(decision.headers("requests"))
    if not decision.allowed:
        raise errors.rate_limited(
            f"Rate limit reached for conversation requests on key {caller.key_id}: limit "
            f"{decision.limit} per minute. Please try again in {decision.retry_after_s:.1f}s.",
            decision.retry_after_s,
            dict(headers),
        )
    return caller


Caller = Annotated[Principal, Depends(conversations_rate_limit)]


@router.get("/v1/conversations")
async def list_conversations(
    caller: Caller,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=512)] = None,
    include_archived: bool = False,
    intent: Annotated[str, Query(max_length=64)] = "",
) -> cp.ConversationList:
    page = await state.history.list_conversations(
        history_pb2.ListConversationsRequest(
            user_id=caller.user_id,
            limit=limit,
            cursor=after or "",
            include_archived=include_archived,
            intent=admin_export.intent_filter(intent),
        ),
    )
    return cp.ConversationList(
        data=[convert.conversation(c) for c in page.conversations],
        has_more=bool(page.next_cursor),
        next_cursor=page.next_cursor or None,
    )


@router.post("/v1/conversations")
async def create_conversation(
    body: cp.CreateConversationBody, caller: Caller, state: State
) -> cp.Conversation:
    created = await state.history.create_conversation(
        history_pb2.CreateConversationRequest(user_id=caller.user_id, title=body.title),
    )
    return convert.conversation(created.conversation)


# Declared before /{conversation_id} so that "search" is not read as an id.
@router.get("/v1/conversations/search")
async def search_conversations(
    caller: Caller,
    state: State,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> cp.SearchResults:
    found = await state.history.search_messages(
        history_pb2.SearchMessagesRequest(user_id=caller.user_id, query=q, limit=limit),
    )
    return cp.SearchResults(data=[convert.search_hit(h) for h in found.hits])


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(
    conversation_id: str, caller: Caller, state: State
) -> cp.ConversationWithMessages:
    got = await state.history.get_conversation(
        history_pb2.GetConversationRequest(user_id=caller.user_id, conversation_id=conversation_id),
    )
    return cp.ConversationWithMessages(
        **convert.conversation(got.conversation).model_dump(),
        messages=[convert.message(m) for m in got.messages],
    )


@router.patch("/v1/conversations/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: cp.UpdateConversationBody, caller: Caller, state: State
) -> cp.Conversation:
    request = history_pb2.UpdateConversationRequest(
        user_id=caller.user_id, conversation_id=conversation_id
    )
    if body.title is not None:
        request.title = body.title
    if body.archived is not None:
        request.archived = body.archived
    if body.active_message_id is not None:
        request.active_message_id = body.active_message_id
    updated = await state.history.update_conversation(request)
    return convert.conversation(updated.conversation)


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(
    conversation_id: str, caller: Caller, state: State
) -> cp.ConversationDeleted:
    # Exchanges of it still queued or dead-lettered in the outbox go first (their text with
    # them), so that none re-creates the conversation after history deleted it.
    await state.outbox.forget_conversation(caller.user_id, conversation_id)
    await state.history.delete_conversation(
        history_pb2.DeleteConversationRequest(
            user_id=caller.user_id, conversation_id=conversation_id
        ),
    )
    return cp.ConversationDeleted(id=conversation_id)


# PUT semantics under either verb: the new feedback replaces the caller's earlier one. Two
# routes, so that each verb has an operation id of its own in the OpenAPI document.
_FEEDBACK = "/v1/conversations/{conversation_id}/messages/{message_id}/feedback"


@router.post(_FEEDBACK, operation_id="post_feedback")
@router.put(_FEEDBACK, operation_id="put_feedback")
async def put_feedback(
    conversation_id: str, message_id: str, body: cp.FeedbackBody, caller: Caller, state: State
) -> cp.MessageFeedback:
    # Classified before it is stored (safety down: 503, as for chat): a flagged correction is
    # never exported as a chosen answer, flagged feedback never counts.
    moderation_json = await verdicts.feedback_verdicts(
        state.safety, body.comment, body.corrected_content
    )
    stored = await state.history.put_feedback(
        history_pb2.PutFeedbackRequest(
            user_id=caller.user_id,
            conversation_id=conversation_id,
            message_id=message_id,
            rating=body.rating,
            comment=body.comment,
            corrected_content=body.corrected_content,
            moderation_json=moderation_json,
        ),
    )
    return cp.MessageFeedback(
        message_id=message_id,
        rating=body.rating,
        comment=body.comment,
        corrected_content=body.corrected_content,
        updated_at=stored.updated_at.seconds if stored.HasField("updated_at") else None,
    )


@router.post("/v1/conversations/{conversation_id}/comparisons")
async def record_comparison(
    conversation_id: str, body: cp.ComparisonBody, caller: Caller, state: State
) -> cp.ComparisonRecorded:
    """The user's pick between two sibling answers ("Which response do you prefer?"). Picking
    again replaces the earlier pick of that pair; the chosen answer's branch becomes active."""
    recorded = await state.history.record_comparison(
        history_pb2.RecordComparisonRequest(
            user_id=caller.user_id,
            conversation_id=conversation_id,
            chosen_message_id=body.chosen_message_id,
            rejected_message_id=body.rejected_message_id,
        ),
    )
    COMPARISONS_ANSWERED.inc()
    return convert.comparison_recorded(recorded)
