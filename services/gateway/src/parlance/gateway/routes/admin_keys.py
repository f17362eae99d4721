"""Admin API for API keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from parlance.gateway import errors
from parlance.gateway.auth import KeyLimits
from parlance.gateway.deps import Admin, State
from parlance.gateway.keystore import KeyRecord

router = APIRouter()


class CreateKeyRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=128)
    name: str = Field(default="", max_length=200)
    rpm_limit: int | None = Field(default=None, ge=0)
    tpm_limit: int | None = Field(default=None, ge=0)
    max_concurrent: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)


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
