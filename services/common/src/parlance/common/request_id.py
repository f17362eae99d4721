"""Request ids: one id follows a request through every service and every log line.

The gateway takes the client's `x-request-id` (or makes one), sends it in gRPC metadata, and
each service's interceptor puts it in a context variable that the log formatter reads.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

METADATA_KEY = "x-request-id"

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def get_request_id() -> str | None:
    return _current.get()


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    return _current.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


def outgoing_metadata(extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
    """Metadata for an outgoing gRPC call carrying the current request id."""
    request_id = _current.get()
    if request_id:
        return ((METADATA_KEY, request_id), *extra)
    return extra


def _from_metadata(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            return str(value)[:128]
    return None


class RequestIdServerInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id context variable for the duration of each incoming call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        # The handler runs in a task created by grpc.aio after this returns, which copies the
        # context at creation: setting the variable here is what the handler will see.
        set_request_id(_from_metadata(handler_call_details.invocation_metadata))
        return await continuation(handler_call_details)
