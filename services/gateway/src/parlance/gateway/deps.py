"""FastAPI dependencies: the resources the lifespan put on app.state, and authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.serving import ChatService
from parlance.gateway.state import GatewayState


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]


def get_chat_service(state: State) -> ChatService:
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
    headers go on every response of the request, errors included (the error handlers read
    `request.state.response_headers`)."""
    limit = state.settings.rpm_limit
    if limit <= 0:
        return caller
    decision = await state.limiter.check("rpm", caller.key_id, limit)
    headers = decision.headers("requests")
    request.state.response_headers = headers
    if not decision.allowed:
        raise errors.rate_limited(
            f"Rate limit reached for requests on key {caller.key_id}: limit {decision.limit} "
            f"per minute. Please try again in {decision.retry_after_s:.1f}s.",
            decision.retry_after_s,
            headers,
        )
    return caller


LimitedCaller = Annotated[Principal, Depends(rate_limit)]
