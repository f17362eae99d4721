"""The schema of POST /v1/embeddings (OpenAI's reference order; extensions in a marked block).

`input` is a string, a list of strings, a list of token ids, or a list of token-id lists; the
ids are the model's own vocabulary (all-MiniLM-L6-v2: BERT's WordPiece ids, special tokens
excluded: the model adds them). Unknown fields are tolerated, as for chat.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

# The schema says every input has at least one character or token and a list at least one
# input (as OpenAI's does), so clients and fuzzers know before sending. Validation itself
# stays the plain union: the flow refuses an empty input with a message naming which one
# (embeddings.py), where pydantic's union errors would name a member of the union.
_TEXT = {"type": "string", "minLength": 1}
_IDS = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
EmbeddingInputs = Annotated[
    str | list[str] | list[int] | list[list[int]],
    WithJsonSchema(
        {
            "anyOf": [
                _TEXT,
                {"type": "array", "items": _TEXT, "minItems": 1},
                _IDS,
                {"type": "array", "items": _IDS, "minItems": 1},
            ]
        }
    ),
]

_INPUT_SHAPES = (
    "input must be a string, an array of strings, an array of token ids (integers) or an "
    "array of token-id arrays"
)


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    )


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    input: EmbeddingInputs
    model: str
    # At most the generator's uint32 field holds (larger was a 500; schemathesis found it).
    dimensions: int | None = Field(default=None, ge=1, le=2**32 - 1)
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    # --- Parlance extensions (documented in the README) -------------------------------------
    # Cut inputs longer than the model's window to it instead of refusing them (400).
    truncate: bool | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        """One clear message for a mixed or odd `input` (param "input"), instead of one per
        member of the union."""
        if isinstance(value, str) or _is_ids(value):
            return value
        if isinstance(value, list) and (
            all(isinstance(i, str) for i in value) or all(_is_ids(i) for i in value)
        ):
            return value
        raise ValueError(_INPUT_SHAPES)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or with encoding_format "base64" the little-endian float32 bytes.
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
