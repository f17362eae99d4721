"""The /v1/conversations REST schema (Parlance's own API, in OpenAI's style: objects carry
"object", times are Unix seconds, lists are {"object": "list", "data": [...]}); the
conversions from the history protos are conversations_convert.py."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# --- requests -------------------------------------------------------------------------------
# Strict: the values must have the JSON types the schema documents (no `"archived": 0.0`
# taken for false), and no field the schema does not have: this API is Parlance's own, so a
# misspelt field (`corrected_answer`) is a 400 naming it rather than a change quietly lost.
# (Chat completions tolerate unknown fields, as OpenAI's API does: clients send extras.)
_REQUEST = ConfigDict(strict=True, extra="forbid")

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> str:
    """Refuses U+0000 (PostgreSQL cannot store it) and lone surrogates (JSON can escape one,
    UTF-8 cannot carry it): a 400 naming the field, before anything reaches history."""
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain U+0000 or an unpaired surrogate")
    return value


# Text the user writes that history keeps.
StoredText = Annotated[str, AfterValidator(storable)]

# An intent name as history stores it (the route names of the intent file): a short token,
# safe in a URL, a metric label and a log line.
INTENT_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
INTENT_RULE = "1-64 characters from [A-Za-z0-9_.:-]"


def valid_intent(value: str | None) -> str:
    """The intent filter of a request ("" for none); a ValueError names the rule."""
    if not value:
        return ""
    if INTENT_PATTERN.fullmatch(value) is None:
        raise ValueError(f"an intent is {INTENT_RULE}")
    return value


class CreateConversationBody(BaseModel):
    model_config = _REQUEST

    title: StoredText = Field(default="", max_length=512)


class UpdateConversationBody(BaseModel):
    model_config = _REQUEST

    title: StoredText | None = Field(default=None, max_length=512)
    archived: bool | None = None
    # Any message of the conversation: the active branch becomes the path to it, continued to
    # the newest leaf below it.
    active_message_id: StoredText | None = Field(default=None, min_length=1, max_length=128)


class FeedbackBody(BaseModel):
    model_config = _REQUEST

    rating: Literal[1, -1]
    comment: StoredText = Field(default="", max_length=10_000)
    # A better answer written by the user: exported as the chosen side of a preference pair
    # (when safety did not flag it).
    corrected_content: StoredText = Field(default="", max_length=100_000)


class ComparisonBody(BaseModel):
    """The user's pick between two answers to one question (sibling assistant messages)."""

    model_config = _REQUEST

    chosen_message_id: StoredText = Field(min_length=1, max_length=128)
    rejected_message_id: StoredText = Field(min_length=1, max_length=128)


# --- responses ------------------------------------------------------------------------------


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    title: str
    created_at: int
    updated_at: int
    archived: bool
    # The leaf of the active branch; null for an empty conversation.
    active_message_id: str | None
    # The distinct intents of its user messages, sorted (the sidebar's filter and labels).
    intents: list[str] = Field(default_factory=list)


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Conversation]
    has_more: bool
    # Pass as `after` to read the next page; null on the last one.
    next_cursor: str | None


class MessageUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MessageFeedback(BaseModel):
    object: Literal["conversation.message.feedback"] = "conversation.message.feedback"
    message_id: str
    rating: int
    comment: str
    corrected_content: str
    updated_at: int | None = None


class MessageComparison(BaseModel):
    # Whether this answer was the one picked, and the other answer of the comparison.
    chosen: bool
    peer_id: str
    decided_at: int


class ConversationMessage(BaseModel):
    id: str
    object: Literal["conversation.message"] = "conversation.message"
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    model: str | None
    usage: MessageUsage | None
    finish_reason: str | None
    moderation: Any = None
    time_to_first_token_ms: int | None
    total_time_ms: int | None
    created_at: int
    # The "‹ 2/3 ›" of a chat page: how many answers or edits share this message's parent,
    # and their ids in creation order (itself included, at sibling_index - 1): switching to
    # one is PATCH /v1/conversations/{id} with active_message_id.
    sibling_count: int
    sibling_index: int
    sibling_ids: list[str]
    # The caller's rating (+1/-1), null when unrated; the full feedback beside it.
    rating: int | None
    feedback: MessageFeedback | None
    # User messages: the intent the gateway classified it as (null: unknown).
    intent: str | None = None
    # Answers: the caller's latest comparison it was a side of (null: never compared).
    comparison: MessageComparison | None = None


class ConversationWithMessages(Conversation):
    # The active branch, root first.
    messages: list[ConversationMessage]


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class ComparisonRecorded(BaseModel):
    object: Literal["conversation.comparison"] = "conversation.comparison"
    conversation_id: str
    # The question both answers reply to.
    parent_id: str
    chosen_message_id: str
    rejected_message_id: str
    chosen_model: str
    rejected_model: str
    created_at: int
    decided_at: int
    # The chosen answer's branch is now the conversation's active one.
    active_message_id: str | None


class SearchHit(BaseModel):
    object: Literal["conversation.search_hit"] = "conversation.search_hit"
    conversation_id: str
    conversation_title: str
    message_id: str
    role: str
    # HTML-safe: escaped text with the matches between <mark> and </mark>.
    snippet: str
    created_at: int


class SearchResults(BaseModel):
    object: Literal["list"] = "list"
    data: list[SearchHit]
