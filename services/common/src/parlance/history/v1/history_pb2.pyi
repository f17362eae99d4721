import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_KIND_UNSPECIFIED: _ClassVar[ExportKind]
    EXPORT_KIND_SFT: _ClassVar[ExportKind]
    EXPORT_KIND_PREFERENCE: _ClassVar[ExportKind]
EXPORT_KIND_UNSPECIFIED: ExportKind
EXPORT_KIND_SFT: ExportKind
EXPORT_KIND_PREFERENCE: ExportKind

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("id", "conversation_id", "parent_id", "role", "content", "model", "usage", "finish_reason", "moderation_json", "time_to_first_token_ms", "total_time_ms", "created_at", "sibling_count", "sibling_index", "rating", "feedback", "sibling_ids", "generated", "intent", "comparison")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MODERATION_JSON_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIBLING_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIBLING_INDEX_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    SIBLING_IDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    id: str
    conversation_id: str
    parent_id: str
    role: str
    content: str
    model: str
    usage: Usage
    finish_reason: str
    moderation_json: str
    time_to_first_token_ms: int
    total_time_ms: int
    created_at: _timestamp_pb2.Timestamp
    sibling_count: int
    sibling_index: int
    rating: int
    feedback: MessageFeedback
    sibling_ids: _containers.RepeatedScalarFieldContainer[str]
    generated: bool
    intent: str
    comparison: MessageComparison
    def __init__(self, id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., role: _Optional[str] = ..., content: _Optional[str] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., moderation_json: _Optional[str] = ..., time_to_first_token_ms: _Optional[int] = ..., total_time_ms: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sibling_count: _Optional[int] = ..., sibling_index: _Optional[int] = ..., rating: _Optional[int] = ..., feedback: _Optional[_Union[MessageFeedback, _Mapping]] = ..., sibling_ids: _Optional[_Iterable[str]] = ..., generated: _Optional[bool] = ..., intent: _Optional[str] = ..., comparison: _Optional[_Union[MessageComparison, _Mapping]] = ...) -> None: ...

class MessageComparison(_message.Message):
    __slots__ = ("chosen", "peer_id", "decided_at")
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    chosen: bool
    peer_id: str
    decided_at: _timestamp_pb2.Timestamp
    def __init__(self, chosen: _Optional[bool] = ..., peer_id: _Optional[str] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MessageFeedback(_message.Message):
    __slots__ = ("rating", "comment", "corrected_content", "updated_at")
    RATING_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_CONTENT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    rating: int
    comment: str
    corrected_content: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, rating: _Optional[int] = ..., comment: _Optional[str] = ..., corrected_content: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("id", "title", "created_at", "updated_at", "archived", "active_leaf_id", "intents")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    archived: bool
    active_leaf_id: str
    intents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., archived: _Optional[bool] = ..., active_leaf_id: _Optional[str] = ..., intents: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateConversationRequest(_message.Message):
    __slots__ = ("user_id", "conversation_id", "title")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    conversation_id: str
    title: str
    def __init__(self, user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class CreateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class GetConversationRequest(_message.Message):
    __slots__ = ("user_id", "conversation_id", "message_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    conversation_id: str
    message_id: str
    def __init__(self, user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class GetConversationResponse(_message.Message):
    __slots__ = ("conversation", "messages")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class ListConversationsRequest(_message.Message):
    __slots__ = ("user_id", "limit", "cursor", "include_archived", "intent")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    cursor: str
    include_archived: bool
    intent: str
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., include_archived: _Optional[bool] = ..., intent: _Optional[str] = ...) -> None: ...

class ListConversationsResponse(_message.Message):
    __slots__ = ("conversations", "next_cursor")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    next_cursor: str
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class UpdateConversationRequest(_message.Message):
    __slots__ = ("user_id", "conversation_id", "title", "archived", "active_message_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    conversation_id: str
    title: str
    archived: bool
    active_message_id: str
    def __init__(self, user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., title: _Optional[str] = ..., archived: _Optional[bool] = ..., active_message_id: _Optional[str] = ...) -> None: ...

class UpdateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class DeleteConversationRequest(_message.Message):
    __slots__ = ("user_id", "conversation_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    conversation_id: str
    def __init__(self, user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ...) -> None: ...

class DeleteConversationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AppendMessagesRequest(_message.Message):
    __slots__ = ("user_id", "conversation_id", "messages", "create_if_missing", "title")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CREATE_IF_MISSING_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    conversation_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    create_if_missing: bool
    title: str
    def __init__(self, user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., create_if_missing: _Optional[bool] = ..., title: _Optional[str] = ...) -> None: ...

class AppendMessagesResponse(_message.Message):
    __slots__ = ("conversation", "messages")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class PutFeedbackRequest(_message.Message):
    __slots__ = ("user_id", "message_id", "rating", "comment", "corrected_content", "conversation_id", "moderation_json")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_CONTENT_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODERATION_JSON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    message_id: str
    rating: int
    comment: str
    corrected_content: str
    conversation_id: str
    moderation_json: str
    def __init__(self, user_id: _Optional[str] = ..., message_id: _Optional[str] = ..., rating: _Optional[int] = ..., comment: _Optional[str] = ..., corrected_content: _Optional[str] = ..., conversation_id: _Optional[str] = ..., moderation_json: _Optional[str] = ...) -> None: ...

class PutFeedbackResponse(_message.Message):
    __slots__ = ("updated_at",)
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SearchMessagesRequest(_message.Message):
    __slots__ = ("user_id", "query", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    query: str
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("conversation_id", "conversation_title", "message_id", "role", "snippet", "created_at")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_TITLE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    conversation_title: str
    message_id: str
    role: str
    snippet: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, conversation_id: _Optional[str] = ..., conversation_title: _Optional[str] = ..., message_id: _Optional[str] = ..., role: _Optional[str] = ..., snippet: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SearchMessagesResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...

class ExportTrainingDataRequest(_message.Message):
    __slots__ = ("kind", "since", "until", "model", "intent", "include_implicit")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IMPLICIT_FIELD_NUMBER: _ClassVar[int]
    kind: ExportKind
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    model: str
    intent: str
    include_implicit: bool
    def __init__(self, kind: _Optional[_Union[ExportKind, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., intent: _Optional[str] = ..., include_implicit: _Optional[bool] = ...) -> None: ...

class ExportTrainingDataResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, records: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordComparisonRequest(_message.Message):
    __slots__ = ("user_id", "conversation_id", "chosen_message_id", "rejected_message_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    conversation_id: str
    chosen_message_id: str
    rejected_message_id: str
    def __init__(self, user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., chosen_message_id: _Optional[str] = ..., rejected_message_id: _Optional[str] = ...) -> None: ...

class Comparison(_message.Message):
    __slots__ = ("conversation_id", "parent_id", "chosen_message_id", "rejected_message_id", "chosen_model", "rejected_model", "created_at", "decided_at")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_MODEL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    parent_id: str
    chosen_message_id: str
    rejected_message_id: str
    chosen_model: str
    rejected_model: str
    created_at: _timestamp_pb2.Timestamp
    decided_at: _timestamp_pb2.Timestamp
    def __init__(self, conversation_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., chosen_message_id: _Optional[str] = ..., rejected_message_id: _Optional[str] = ..., chosen_model: _Optional[str] = ..., rejected_model: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordComparisonResponse(_message.Message):
    __slots__ = ("comparison", "conversation")
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    comparison: Comparison
    conversation: Conversation
    def __init__(self, comparison: _Optional[_Union[Comparison, _Mapping]] = ..., conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class PutImplicitFeedbackRequest(_message.Message):
    __slots__ = ("user_id", "message_id", "kind", "score", "conversation_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    message_id: str
    kind: str
    score: float
    conversation_id: str
    def __init__(self, user_id: _Optional[str] = ..., message_id: _Optional[str] = ..., kind: _Optional[str] = ..., score: _Optional[float] = ..., conversation_id: _Optional[str] = ...) -> None: ...

class PutImplicitFeedbackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelReportRequest(_message.Message):
    __slots__ = ("since", "until", "intent")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    intent: str
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., intent: _Optional[str] = ...) -> None: ...

class ModelReportRow(_message.Message):
    __slots__ = ("model", "answers", "rated_answers", "thumbs_up", "thumbs_down", "flagged_answers", "reasked_answers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    RATED_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    THUMBS_UP_FIELD_NUMBER: _ClassVar[int]
    THUMBS_DOWN_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    REASKED_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    answers: int
    rated_answers: int
    thumbs_up: int
    thumbs_down: int
    flagged_answers: int
    reasked_answers: int
    def __init__(self, model: _Optional[str] = ..., answers: _Optional[int] = ..., rated_answers: _Optional[int] = ..., thumbs_up: _Optional[int] = ..., thumbs_down: _Optional[int] = ..., flagged_answers: _Optional[int] = ..., reasked_answers: _Optional[int] = ...) -> None: ...

class ComparisonOutcome(_message.Message):
    __slots__ = ("chosen_model", "rejected_model", "count")
    CHOSEN_MODEL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    chosen_model: str
    rejected_model: str
    count: int
    def __init__(self, chosen_model: _Optional[str] = ..., rejected_model: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class GetModelReportResponse(_message.Message):
    __slots__ = ("models", "comparisons")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelReportRow]
    comparisons: _containers.RepeatedCompositeFieldContainer[ComparisonOutcome]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelReportRow, _Mapping]]] = ..., comparisons: _Optional[_Iterable[_Union[ComparisonOutcome, _Mapping]]] = ...) -> None: ...
