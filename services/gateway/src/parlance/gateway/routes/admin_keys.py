"""Admin API for API keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from parlance.gateway import errors
from parlance.gateway.auth import KeyLimits
from parlance.gateway.deps import Admin, State
from parlance.gateway.keystore import KeyRecord

router = APIRouter()


# The limits are stored in 32-bit integer columns (PostgreSQL's INTEGER).
_MAX_LIMIT = 2**31 - 1


def _integral_float_to_int(value: object) -> object:
    """JSON Schema's "integer" includes 10.0; strict validation alone would refuse it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema means it: 10 or 10.0, never true, "10" or 10.5. The bounds sit
# inside the Annotated so that the OpenAPI schema shows them as minimum/maximum.
Limit = Annotated[int, Field(ge=0, le=_MAX_LIMIT), BeforeValidator(_integral_float_to_int)]
PositiveLimit = Annotated[int, Field(ge=1, le=_MAX_LIMIT), BeforeValidator(_integral_float_to_int)]


class CreateKeyRequest(BaseModel):
    # Strict, like the chat request models: `false` is not 0 and `10.0` is not 10.
    model_config = ConfigDict(strict=True)

    user_id: str = Field(min_length=1, max_length=128)
    name: str = Field(default="", max_length=200)
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_concurrent: Limit | None = None
    max_tokens: PositiveLimit | None = None


def key_json(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "api_key",
        "user_id": record.user_id,
        "name": record.name,
        "hint": record.hint,
        "rpm_limit": record.limits.rpm,
        "tpm_limit": record.limits.tpm,
        "max_concurrent": record.limits.max_concurrent,
        "max_tokens": record.limits.max_tokens,
        "created_at": int(record.created_at.timestamp()),
        "revoked_at": int(record.revoked_at.timestamp()) if record.revoked_at else None,
    }


@router.post("/v1/admin/keys", status_code=201)
async def create_key(body: CreateKeyRequest, _: Admin, state: State) -> JSONResponse:
    key, record = await state.key_store.create(
        body.user_id,
        body.name,
        KeyLimits(
            rpm=body.rpm_limit,
            tpm=body.tpm_limit,
            max_concurrent=body.max_concurrent,
            max_tokens=body.max_tokens,
        ),
    )
    # The only time the key itself is ever returned.
    return JSONResponse({**key_json(record), "key": key}, status_code=201)


@router.get("/v1/admin/keys")
async def list_keys(
    _: Admin, state: State, user_id: str | None = None, include_revoked: bool = False
) -> dict[str, Any]:
    records = await state.key_store.list(user_id, include_revoked)
    return {"object": "list", "data": [key_json(r) for r in records]}


@router.delete("/v1/admin/keys/{key_id}")
async def revoke_key(key_id: str, _: Admin, state: State) -> dict[str, Any]:
    if not await state.key_store.revoke(key_id):
        raise errors.not_found(f"No active key with id '{key_id}'.", param="key_id")
    return {"id": key_id, "object": "api_key", "revoked": True}
