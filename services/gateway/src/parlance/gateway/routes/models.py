"""GET /v1/models and GET /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter

from parlance.gateway import errors
from parlance.gateway.deps import Caller, State
from parlance.gateway.protocol import Model, ModelList

router = APIRouter()


def _model(info) -> Model:  # type: ignore[no-untyped-def]
    return Model(
        id=info.id,
        created=info.created,
        owned_by=info.owned_by or "parlance",
        max_model_len=info.max_model_len or None,
        engine=info.engine or None,
    )


@router.get("/v1/models")
async def list_models(_: Caller, state: State) -> ModelList:
    return ModelList(data=[_model(m) for m in await state.models.list()])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, _: Caller, state: State) -> Model:
    for info in await state.models.list():
        if info.id == model_id:
            return _model(info)
    raise errors.model_not_found(model_id)
