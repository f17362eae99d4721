"""The OpenAI schema of chat completions: the request, the response and the stream's chunks.

Fields follow the order of OpenAI's API reference; Parlance's extensions sit in a marked block.
Unknown request fields are tolerated (clients send fields from newer API versions) and logged
by the router; fields that would change the output but that Parlance cannot honour (tools,
logit_bias, non-text response formats, audio) are rejected with a 400 rather than silently
ignored.

The response models are what the gateway renders: every field is set explicitly and
serialized with `model_dump_json(exclude_unset=True)`, so a field left unset (usage on a chunk
of a stream without `include_usage`, conversation_id outside a stored conversation) is absent
from the JSON, and one set to None is a JSON null, as in OpenAI's answers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

# Request models are strict: values must have the JSON type OpenAI's reference gives
# (`"stream": 0` or `"n": 1.5` is a 400, not silently coerced); integers are still accepted
# where a number is expected.


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; multi-part content is joined. Non-text parts are rejected by
        the serving layer before this is called."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str


class ParlanceOptions(BaseModel):
    """The request's Parlance extension object ("parlance"; README, "Comparisons")."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Two answers side by side, stored as sibling branches for the user to pick from:
    # "always" (or true): the user asked for a comparison; "offer": the client can show one
    # (the web page), the gateway compares a share of such requests (GATEWAY_COMPARE_SHARE);
    # "never" (or false, or absent): one answer, as OpenAI's API gives.
    compare: bool | Literal["always", "offer", "never"] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    messages: list[ChatMessage]
    model: str
    frequency_penalty: FiniteFloat | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[str, str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: FiniteFloat | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: FiniteFloat | None = Field(default=None, ge=0.0, le=2.0)
    tool_choice: Any = None
    tools: list[Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    top_p: FiniteFloat | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = None

    # --- Parlance extensions (documented in the README) -------------------------------------
    # Continue a stored conversation: its active branch becomes the context, and the new user
    # message and the answer are appended to it.
    conversation_id: str | None = Field(default=None, max_length=128)
    # With conversation_id: branch the conversation instead of continuing its active branch.
    # The answer (and the request's messages, if any) go below this message: regenerate =
    # the id of the user message to answer again, with no messages; edit = the edited
    # message's parent ("" for a new root), with the new user message.
    parent_message_id: str | None = Field(default=None, max_length=128)
    # vLLM's sampling extensions.
    # The generator's contract carries it as an int32.
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    min_p: FiniteFloat | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: FiniteFloat | None = Field(default=None, gt=0.0, le=10.0)
    # vLLM's benchmark extension: keep generating past end-of-sequence up to max_tokens.
    ignore_eos: bool | None = None
    # Parlance's options object (comparisons: chat/compare.py).
    parlance: ParlanceOptions | None = None
    # Best-of-n (chat/best_of.py): k candidates, scored by the reward model, the best one
    # returned. OpenAI SDKs send it with extra_body={"best_of": k}; 1 is the plain answer.
    best_of: int | None = Field(default=None, ge=1, le=128)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens.
        return self.max_completion_tokens or self.max_tokens

    def is_deterministic(self) -> bool:
        """Same request, same answer: greedy decoding or a fixed seed."""
        return self.temperature == 0.0 or self.seed is not None


# --- Responses -----------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class IntentInfo(BaseModel):
    """The intent route a request took (README, "Intent routing")."""

    name: str
    # Similarity of the best intent (cosine); 0.0 when nothing was classified.
    score: float
    # True when no intent reached the threshold (or classification failed): the default route.
    fallback: bool


class ComparisonInfo(BaseModel):
    """Two answers to compare (README, "Comparisons"): choice i is stored as message_ids[i]
    (a sibling branch each), the ids the pick names."""

    message_ids: list[str]
    # "asked" (the request's compare was "always") or "share" (GATEWAY_COMPARE_SHARE chose it).
    reason: Literal["asked", "share"]


class BestOfInfo(BaseModel):
    """How a best_of answer was chosen (README, "Best-of-n")."""

    # Candidates generated (the request's best_of).
    n: int
    # The returned candidate's index among the n (its choice in the response is index 0).
    chosen_index: int
    # Its reward score (absent when every candidate was flagged: nothing was scored).
    score: float | None = None
    # Every candidate's score, by index; null for a candidate output moderation flagged.
    scores: list[float | None]
    # The reward model that scored them.
    reward_model: str


class ParlanceExtension(BaseModel):
    """Parlance's additions to a response, under one key ("parlance") that OpenAI clients
    ignore (their response models keep unknown fields)."""

    intent: IntentInfo | None = None
    comparison: ComparisonInfo | None = None
    best_of: BestOfInfo | None = None
    # The input was flagged in these categories and answered with care (GATEWAY_INPUT_CARE_*).
    care: list[str] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    # Parlance extension: the stored conversation this exchange was appended to.
    conversation_id: str | None = None
    # Parlance extension object: set only when there is something to say (the intent route,
    # a comparison, best_of, an answer given with care).
    parlance: ParlanceExtension | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = None
    conversation_id: str | None = None
    # Parlance extension object: on the first chunk of a stream, when there is one.
    parlance: ParlanceExtension | None = None
