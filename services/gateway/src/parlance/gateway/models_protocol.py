"""The schema of GET /v1/models: OpenAI's model object and list, with Parlance's extra fields
(the OpenAI SDKs keep unknown fields, so `client.models.list()` parses them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # --- Parlance extensions -------------------------------------------------------------
    # "chat" (/v1/chat/completions) or "embed" (/v1/embeddings).
    task: str = "chat"
    # Chat: the context window in tokens (prompt + completion). Embed: the longest input.
    max_model_len: int | None = None
    engine: str | None = None
    # Embed models: the length of their vectors.
    dimensions: int | None = None
    # Aliases (GATEWAY_MODEL_ALIASES): the model id the alias stands for (a split's heaviest).
    alias_for: str | None = None
    # Split aliases: the percent of users each model id gets (README, "Registering models
    # and splitting traffic").
    split: dict[str, float] | None = None
    # LoRA adapters: the base chat model they apply to.
    parent: str | None = None


class ModelCardList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
