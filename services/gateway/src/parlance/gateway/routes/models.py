"""GET /v1/models and GET /v1/models/{model}: every model of every generator target (and the
configured aliases), each with its task."""

from __future__ import annotations

from fastapi import APIRouter

from parlance.gateway import errors
from parlance.gateway.deps import Caller, State
from parlance.gateway.models_protocol import ModelCard, ModelCardList

router = APIRouter()


@router.get("/v1/models", response_model_exclude_none=True)
async def list_models(_: Caller, state: State) -> ModelCardList:
    return ModelCardList(data=[ModelCard(**card) for card in await state.models.cards()])


@router.get("/v1/models/{model_id:path}", response_model_exclude_none=True)
async def retrieve_model(model_id: str, _: Caller, state: State) -> ModelCard:
    for card in await state.models.cards():
        if card["id"] == model_id:
            return ModelCard(**card)
    raise errors.model_not_found(model_id)
