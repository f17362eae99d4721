"""FastAPI dependencies: the resources the lifespan put on app.state, and authentication."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from parlance.gateway import errors
from parlance.gateway.auth import Principal, digest
from parlance.gateway.chat.serving import ChatService
from parlance.gateway.headers import ResponseHeaders
from parlance.gateway.redis_state import RedisUnavailable
from parlance.gateway.state import GatewayState

# Dependencies are `async def` even when they do not await: FastAPI runs a plain `def`
# dependency in a worker thread, a thread hop on every request for an attribute read.


async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]


async def get_chat_service(state: State) -> ChatService:
    return state.chat


Chat = Annotated[ChatService, Depends(get_chat_service)]


async def authenticate(request: Request, state: State) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise errors.unauthorized(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    principal = await state.keys.authenticate(key.strip())
    if principal is None:
        raise errors.unauthorized()
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


async def rate_limit(request: Request, caller: Caller, state: State) -> Principal:
    """Authenticates, then takes the key's requests-per-minute decision. The x-ratelimit-*
    headers go on every response of the request, errors included (the request's
    ResponseHeaders, which the error handlers send too)."""
    limit = caller.limits.rpm or state.settings.rpm_limit
    if limit <= 0:
        return caller
    try:
        decision = await state.limiter.check("rpm", caller.key_id, limit)
    except RedisUnavailable:
        # The "closed" policy while Redis is down.
        raise errors.service_unavailable(
            "Rate limiting is unavailable (Redis); retry shortly.", state.settings.retry_after_s
        ) from None
    headers = ResponseHeaders.of(request)
    headers.update(decision.headers("requests"))
    if not decision.allowed:
        headers.update(await tokens_headers(state, caller))
        raise errors.rate_limited(
            f"Rate limit reached for requests on key {caller.key_id}: limit {decision.limit} "
            f"per minute. Please try again in {decision.retry_after_s:.1f}s.",
            decision.retry_after_s,
            headers,
        )
    return caller


LimitedCaller = Annotated[Principal, Depends(rate_limit)]


async def tokens_headers(state: GatewayState, caller: Principal) -> dict[str, str]:
    """The x-ratelimit-*-tokens headers of a request refused before its TPM decision (every
    response carries them, as OpenAI's do)."""
    limit = caller.limits.tpm or state.settings.tpm_limit
    if limit <= 0:
        return {}
    decision = await state.limiter.peek("tpm", caller.key_id, limit)
    return decision.headers("tokens") if decision is not None else {}


async def authenticate_admin(request: Request, state: State) -> None:
    """Admin routes: the bearer must be GATEWAY_ADMIN_KEY (compared in constant time, as
    digests so that the length does not leak either). A user's valid key gets 403, anything
    else 401; with no admin key configured, admin routes are closed to everyone."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise errors.unauthorized("This route needs the admin key as a Bearer token.")
    admin_key = state.settings.admin_key
    if admin_key and hmac.compare_digest(digest(key), digest(admin_key)):
        return
    if await state.keys.authenticate(key) is not None:
        raise errors.APIError(
            403,
            "This route needs the admin key; user keys are not admitted.",
            type="invalid_request_error",
            code="permission_denied",
        )
    raise errors.unauthorized()


Admin = Annotated[None, Depends(authenticate_admin)]
