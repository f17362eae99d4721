"""Pure conversions between the history protos and the domain records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from parlance.history.domain import (
    ComparisonRecord,
    ConversationRecord,
    ConversationUpdate,
    ExportFilter,
    Feedback,
    ImplicitFeedback,
    MessageView,
    ModelReport,
    NewMessage,
    ReportFilter,
    SearchHitRecord,
)
from parlance.history.v1 import history_pb2


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _optional_time(proto: Any, field: str) -> datetime | None:
    return getattr(proto, field).ToDatetime(tzinfo=UTC) if proto.HasField(field) else None


def conversation_to_proto(
    record: ConversationRecord, intents: Sequence[str] = ()
) -> history_pb2.Conversation:
    return history_pb2.Conversation(
        id=record.id,
        title=record.title,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        archived=record.archived,
        active_leaf_id=record.active_leaf_id or "",
        intents=intents,
    )


def message_to_proto(view: MessageView) -> history_pb2.Message:
    m = view.message
    proto = history_pb2.Message(
        id=m.id,
        conversation_id=m.conversation_id,
        role=m.role,
        content=m.content,
        model=m.model,
        usage=history_pb2.Usage(
            prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens
        ),
        finish_reason=m.finish_reason,
        moderation_json=m.moderation_json,
        created_at=timestamp(m.created_at),
        sibling_count=view.sibling_count,
        sibling_index=view.sibling_index,
        sibling_ids=view.sibling_ids,
        rating=view.rating,
        generated=m.generated,
        intent=m.intent,
    )
    if view.comparison is not None:
        proto.comparison.CopyFrom(
            history_pb2.MessageComparison(
                chosen=view.comparison.chosen_message_id == m.id,
                peer_id=view.comparison.peer_of(m.id),
                decided_at=timestamp(view.comparison.updated_at),
            )
        )
    if m.parent_id is not None:
        proto.parent_id = m.parent_id
    if view.feedback is not None:
        proto.feedback.CopyFrom(
            history_pb2.MessageFeedback(
                rating=view.feedback.rating,
                comment=view.feedback.comment,
                corrected_content=view.feedback.corrected_content,
                updated_at=timestamp(view.feedback.updated_at),
            )
        )
    if m.ttft_ms is not None:
        proto.time_to_first_token_ms = m.ttft_ms
    if m.total_ms is not None:
        proto.total_time_ms = m.total_ms
    return proto


def new_message_from_proto(proto: history_pb2.Message) -> NewMessage:
    return NewMessage(
        id=proto.id,
        parent_id=proto.parent_id if proto.HasField("parent_id") else None,
        role=proto.role,
        content=proto.content,
        model=proto.model,
        prompt_tokens=proto.usage.prompt_tokens,
        completion_tokens=proto.usage.completion_tokens,
        finish_reason=proto.finish_reason,
        moderation_json=proto.moderation_json,
        ttft_ms=(
            proto.time_to_first_token_ms if proto.HasField("time_to_first_token_ms") else None
        ),
        total_ms=proto.total_time_ms if proto.HasField("total_time_ms") else None,
        generated=proto.generated,
        intent=proto.intent,
    )


def update_from_proto(proto: history_pb2.UpdateConversationRequest) -> ConversationUpdate:
    return ConversationUpdate(
        title=proto.title if proto.HasField("title") else None,
        archived=proto.archived if proto.HasField("archived") else None,
        active_message_id=(
            proto.active_message_id if proto.HasField("active_message_id") else None
        ),
    )


def feedback_from_proto(proto: history_pb2.PutFeedbackRequest) -> Feedback:
    return Feedback(
        message_id=proto.message_id,
        rating=proto.rating,
        comment=proto.comment,
        corrected_content=proto.corrected_content,
        conversation_id=proto.conversation_id if proto.HasField("conversation_id") else None,
        moderation_json=proto.moderation_json,
    )


_KINDS = {
    history_pb2.EXPORT_KIND_UNSPECIFIED: "all",
    history_pb2.EXPORT_KIND_SFT: "sft",
    history_pb2.EXPORT_KIND_PREFERENCE: "preference",
}


def export_filter_from_proto(proto: history_pb2.ExportTrainingDataRequest) -> ExportFilter:
    return ExportFilter(
        kind=_KINDS.get(proto.kind, "all"),
        since=_optional_time(proto, "since"),
        until=_optional_time(proto, "until"),
        model=proto.model,
        intent=proto.intent,
        include_implicit=proto.include_implicit,
    )


def search_hit_to_proto(hit: SearchHitRecord) -> history_pb2.SearchHit:
    return history_pb2.SearchHit(
        conversation_id=hit.conversation_id,
        conversation_title=hit.conversation_title,
        message_id=hit.message_id,
        role=hit.role,
        snippet=hit.snippet,
        created_at=timestamp(hit.created_at),
    )


def comparison_to_proto(record: ComparisonRecord) -> history_pb2.Comparison:
    return history_pb2.Comparison(
        conversation_id=record.conversation_id,
        parent_id=record.parent_id,
        chosen_message_id=record.chosen_message_id,
        rejected_message_id=record.rejected_message_id,
        chosen_model=record.chosen_model,
        rejected_model=record.rejected_model,
        created_at=timestamp(record.created_at),
        decided_at=timestamp(record.updated_at),
    )


def implicit_feedback_from_proto(proto: history_pb2.PutImplicitFeedbackRequest) -> ImplicitFeedback:
    return ImplicitFeedback(
        message_id=proto.message_id,
        kind=proto.kind,
        score=proto.score,
        conversation_id=proto.conversation_id if proto.HasField("conversation_id") else None,
    )


def report_filter_from_proto(proto: history_pb2.GetModelReportRequest) -> ReportFilter:
    return ReportFilter(
        since=_optional_time(proto, "since"),
        until=_optional_time(proto, "until"),
        intent=proto.intent,
    )


def report_to_proto(report: ModelReport) -> history_pb2.GetModelReportResponse:
    return history_pb2.GetModelReportResponse(
        models=[
            history_pb2.ModelReportRow(
                model=row.model,
                answers=row.answers,
                rated_answers=row.rated_answers,
                thumbs_up=row.thumbs_up,
                thumbs_down=row.thumbs_down,
                flagged_answers=row.flagged_answers,
                reasked_answers=row.reasked_answers,
            )
            for row in report.models
        ],
        comparisons=[
            history_pb2.ComparisonOutcome(
                chosen_model=row.chosen_model, rejected_model=row.rejected_model, count=row.count
            )
            for row in report.comparisons
        ],
    )
