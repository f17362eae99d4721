"""POST /v1/moderations, in OpenAI's request and response format, served by safety."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from parlance.gateway import errors
from parlance.gateway.categories import OPENAI_CATEGORIES
from parlance.gateway.deps import LimitedCaller, State
from parlance.safety.v1 import safety_pb2

router = APIRouter()

MAX_INPUTS = 256


class TextPart(BaseModel):
    """A text part of a multi-modal input, as OpenAI's omni-moderation takes it. Image parts
    are outside the schema (the classifiers read text) and refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str

    @field_validator("type", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        if value == "image_url":
            raise ValueError("images are not supported: this deployment's moderation reads text")
        return value


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    # A string, strings (one result each), or one multi-modal input as parts (one result).
    # The bounds are in the schema so that the OpenAPI document states them.
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)]
        | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_INPUTS)]
    ) = Field(...)
    model: str | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return [str(item) for item in self.input]
        # The parts of one input are judged together, as OpenAI does: one result.
        return ["\n".join(item.text for item in self.input if isinstance(item, TextPart))]


@router.post("/v1/moderations")
async def create_moderation(
    body: ModerationRequest, caller: LimitedCaller, state: State
) -> dict[str, Any]:
    texts = body.texts()
    if not texts:
        raise errors.invalid_request("input must not be empty.", param="input")
    if len(texts) > MAX_INPUTS:
        raise errors.invalid_request(f"At most {MAX_INPUTS} inputs per request.", param="input")
    if sum(len(t) for t in texts) > state.settings.max_input_chars:
        raise errors.invalid_request(
            f"The input is longer than {state.settings.max_input_chars} characters.",
            param="input",
        )
    reply = await state.safety.classify(texts, safety_pb2.DIRECTION_INPUT)
    info = await state.safety.info()
    evaluated = list(info.evaluated_categories)
    results = []
    for verdict in reply.results:
        scores = {c: 0.0 for c in OPENAI_CATEGORIES}
        flags = {c: False for c in OPENAI_CATEGORIES}
        for category in verdict.categories:
            scores[category.category] = round(float(category.score), 6)
            flags[category.category] = bool(category.flagged)
        results.append(
            {
                "flagged": bool(verdict.flagged),
                "categories": flags,
                "category_scores": scores,
                "category_applied_input_types": {
                    c: (["text"] if c in evaluated else []) for c in OPENAI_CATEGORIES
                },
            }
        )
    return {
        "id": f"modr-{uuid.uuid4().hex}",
        "model": reply.model,
        "results": results,
        "evaluated_categories": evaluated,
    }
