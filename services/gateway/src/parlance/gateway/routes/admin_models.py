"""Admin API for models: register and remove run-time models (reward and embedding models,
LoRA adapters), set aliases and traffic splits, and the model report (README, "Registering
models and splitting traffic")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from parlance.gateway import errors, model_report, splits
from parlance.gateway.conversations_protocol import valid_intent
from parlance.gateway.deps import Admin, State
from parlance.gateway.registrations import Registration
from parlance.gateway.routing import Target

router = APIRouter()

# Ids are what the generators serve and what history stores: no spaces or control characters;
# `@` and `/` are allowed (trainer output is `<name>@<hash8>`).
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$"
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"
# The description a trainer's folder carries: a reward model's card, an adapter's manifest.
CARD_FILES = ("model_card.json", "manifest.json")
MAX_CARD_BYTES = 256 * 1024


class RegisterModelRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    id: str = Field(pattern=MODEL_ID_PATTERN)
    task: Literal["reward", "embed", "chat"]
    # The folder as the generators see it (inside their GENERATOR_LOAD_ROOT).
    # No NUL: no file system path holds one (Path() refuses it with a ValueError).
    path: str = Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")
    # LoRA adapters (task chat): the base chat model they apply to.
    parent: str | None = Field(default=None, pattern=MODEL_ID_PATTERN)
    settings: dict[str, str] = Field(default_factory=dict, max_length=64)


class AliasRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    # One model, or several with weights (any scale; 0 lists a model without traffic).
    model: str | None = Field(default=None, pattern=MODEL_ID_PATTERN)
    weights: dict[str, float] | None = Field(default=None, max_length=splits.MAX_MODELS_PER_ALIAS)


def _read_card(path: str) -> dict[str, Any] | None:
    """The folder's card or manifest when this gateway can read it (same host, or the models
    volume mounted here too); None otherwise."""
    for name in CARD_FILES:
        try:
            file = Path(path) / name
            if file.is_file() and file.stat().st_size <= MAX_CARD_BYTES:
                card = json.loads(file.read_text())
                return card if isinstance(card, dict) else None
        except (OSError, ValueError):
            continue
    return None


def _target_states(registration: Registration, targets: list[Target]) -> list[dict[str, str]]:
    states = []
    for target in targets:
        if registration.parent and registration.parent not in target.models:
            continue  # an adapter belongs only where its parent is served
        if not target.serving:
            status = "down"
        elif registration.id in target.models:
            status = "loaded"
        else:
            status = "missing"
        states.append({"target": target.url, "status": status})
    return states


async def registration_json(registration: Registration, targets: list[Target]) -> dict[str, Any]:
    return {
        "id": registration.id,
        "object": "model.registration",
        "task": registration.task,
        "path": registration.path,
        "parent": registration.parent,
        "settings": registration.settings,
        "created_at": registration.created_at,
        "targets": _target_states(registration, targets),
        "card": await asyncio.to_thread(_read_card, registration.path),
    }


@router.post("/v1/admin/models", status_code=201)
async def register_model(body: RegisterModelRequest, _: Admin, state: State) -> JSONResponse:
    if body.task == "chat" and not body.parent:
        raise errors.invalid_request(
            "A chat model registered at run time is a LoRA adapter: name its base model in "
            "'parent'.",
            param="parent",
        )
    if body.parent and body.task != "chat":
        raise errors.invalid_request(
            "'parent' is for LoRA adapters (task 'chat') only.", param="parent"
        )
    registration = await state.runtime_models.register(
        Registration(
            id=body.id, task=body.task, path=body.path, parent=body.parent, settings=body.settings
        )
    )
    payload = await registration_json(registration, state.generator.targets)
    return JSONResponse(payload, status_code=201)


@router.get("/v1/admin/models")
async def list_registered_models(_: Admin, state: State) -> dict[str, Any]:
    targets = state.generator.targets
    registrations = state.runtime_models.registrations.values()
    return {
        "object": "list",
        "data": [await registration_json(r, targets) for r in registrations],
    }


@router.get("/v1/admin/models/report")
async def model_report_route(
    _: Admin,
    state: State,
    since: Annotated[str | None, Query(max_length=64)] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    intent: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    try:
        intent = valid_intent(intent) or None
    except ValueError as exc:
        raise errors.invalid_request(f"Invalid intent: {exc}.", param="intent") from None
    reply = await model_report.fetch_report(state.history, since, until, intent)
    parents = {r.id: r.parent for r in state.runtime_models.registrations.values() if r.parent}
    query = {"since": since, "until": until, "intent": intent}
    return model_report.report_json(reply, parents, query)


@router.delete("/v1/admin/models/{model_id:path}")
async def remove_model(model_id: str, _: Admin, state: State) -> dict[str, Any]:
    unloaded, pending = await state.runtime_models.remove(model_id)
    # pending: targets whose UnloadModel failed; the registry's sync retries them.
    return {
        "id": model_id,
        "object": "model.registration",
        "deleted": True,
        "unloaded": unloaded,
        "pending": pending,
    }


def _alias_json(alias: str, weights: splits.Weights, source: str) -> dict[str, Any]:
    return {
        "alias": alias,
        "object": "model.alias",
        "source": source,
        "weights": dict(weights),
        "percent": splits.as_percentages(weights),
    }


@router.get("/v1/admin/aliases")
async def list_aliases(_: Admin, state: State) -> dict[str, Any]:
    models = state.models
    return {
        "object": "list",
        "data": [
            _alias_json(a, w, "admin" if a in models.overrides else "config")
            for a, w in models.aliases.items()
        ],
    }


@router.put("/v1/admin/aliases/{alias}")
async def set_alias(
    alias: Annotated[str, PathParam(pattern=ALIAS_PATTERN)],
    body: AliasRequest,
    _: Admin,
    state: State,
) -> dict[str, Any]:
    if (body.model is None) == (body.weights is None):
        raise errors.invalid_request("Send either 'model' or 'weights'.", param="weights")
    try:
        weights = splits.parse_alias(alias, body.model or body.weights)
    except splits.SplitError as exc:
        raise errors.invalid_request(str(exc), param="weights") from None
    await state.runtime_models.set_alias(alias, weights)
    return _alias_json(alias, weights, "admin")


@router.delete("/v1/admin/aliases/{alias}")
async def delete_alias(alias: str, _: Admin, state: State) -> dict[str, Any]:
    await state.runtime_models.delete_alias(alias)
    return {"alias": alias, "object": "model.alias", "deleted": True}
