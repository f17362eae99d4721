"""History's records as the /v1/conversations response models (conversations_protocol.py):
pure conversions from the history protos, times as Unix seconds, empty fields as None."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from parlance.gateway.conversations_protocol import (
    ComparisonRecorded,
    Conversation,
    ConversationMessage,
    MessageComparison,
    MessageFeedback,
    MessageUsage,
    SearchHit,
)
from parlance.history.v1 import history_pb2


def _seconds(ts: Timestamp) -> int:
    return int(ts.seconds)


def conversation(proto: history_pb2.Conversation) -> Conversation:
    return Conversation(
        id=proto.id,
        title=proto.title,
        created_at=_seconds(proto.created_at),
        updated_at=_seconds(proto.updated_at),
        archived=proto.archived,
        active_message_id=proto.active_leaf_id or None,
        intents=list(proto.intents),
    )


def _moderation(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def message(proto: history_pb2.Message) -> ConversationMessage:
    assistant = proto.role == "assistant"
    feedback = None
    if proto.HasField("feedback"):
        feedback = MessageFeedback(
            message_id=proto.id,
            rating=proto.feedback.rating,
            comment=proto.feedback.comment,
            corrected_content=proto.feedback.corrected_content,
            updated_at=_seconds(proto.feedback.updated_at),
        )
    return ConversationMessage(
        id=proto.id,
        conversation_id=proto.conversation_id,
        parent_id=proto.parent_id or None,
        role=proto.role,
        content=proto.content,
        model=proto.model or None,
        usage=(
            MessageUsage(
                prompt_tokens=proto.usage.prompt_tokens,
                completion_tokens=proto.usage.completion_tokens,
                total_tokens=proto.usage.prompt_tokens + proto.usage.completion_tokens,
            )
            if assistant
            else None
        ),
        finish_reason=proto.finish_reason or None,
        moderation=_moderation(proto.moderation_json),
        time_to_first_token_ms=(
            proto.time_to_first_token_ms if proto.HasField("time_to_first_token_ms") else None
        ),
        total_time_ms=proto.total_time_ms if proto.HasField("total_time_ms") else None,
        created_at=_seconds(proto.created_at),
        sibling_count=proto.sibling_count,
        sibling_index=proto.sibling_index,
        sibling_ids=list(proto.sibling_ids),
        rating=proto.rating or None,
        feedback=feedback,
        intent=proto.intent or None,
        comparison=(
            MessageComparison(
                chosen=proto.comparison.chosen,
                peer_id=proto.comparison.peer_id,
                decided_at=_seconds(proto.comparison.decided_at),
            )
            if proto.HasField("comparison")
            else None
        ),
    )


def search_hit(proto: history_pb2.SearchHit) -> SearchHit:
    return SearchHit(
        conversation_id=proto.conversation_id,
        conversation_title=proto.conversation_title,
        message_id=proto.message_id,
        role=proto.role,
        snippet=proto.snippet,
        created_at=_seconds(proto.created_at),
    )


def comparison_recorded(proto: history_pb2.RecordComparisonResponse) -> ComparisonRecorded:
    c = proto.comparison
    return ComparisonRecorded(
        conversation_id=c.conversation_id,
        parent_id=c.parent_id,
        chosen_message_id=c.chosen_message_id,
        rejected_message_id=c.rejected_message_id,
        chosen_model=c.chosen_model,
        rejected_model=c.rejected_model,
        created_at=_seconds(c.created_at),
        decided_at=_seconds(c.decided_at),
        active_message_id=proto.conversation.active_leaf_id or None,
    )
