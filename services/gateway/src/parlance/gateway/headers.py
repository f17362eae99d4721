"""The response headers decided during a request (x-ratelimit-*, x-cache, Server-Timing),
which every answer to that request carries, errors included."""

from __future__ import annotations

from starlette.requests import HTTPConnection

_SCOPE_KEY = "parlance.response_headers"


class ResponseHeaders(dict[str, str]):
    """One per request, kept in the request's ASGI scope: the dependencies and the route add
    to it, the success response and the error handlers (errors.py) send it."""

    @classmethod
    def of(cls, connection: HTTPConnection) -> ResponseHeaders:
        headers = connection.scope.get(_SCOPE_KEY)
        if headers is None:
            headers = connection.scope[_SCOPE_KEY] = cls()
        return headers


async def response_headers(connection: HTTPConnection) -> ResponseHeaders:
    """FastAPI dependency: this request's ResponseHeaders."""
    return ResponseHeaders.of(connection)
