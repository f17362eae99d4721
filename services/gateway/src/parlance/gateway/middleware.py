"""ASGI middleware: request ids, the request body size limit, and HTTP metrics.

Written as plain ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched
and their duration is measured to the last byte.
"""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parlance.common.request_id import new_request_id, reset_request_id, set_request_id
from parlance.gateway.metrics import HTTP_LATENCY, HTTP_REQUESTS


def _error_body(status: int, message: str, code: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = (headers.get("x-request-id") or "")[:128] or new_request_id()
        token = set_request_id(request_id)
        started = time.perf_counter()
        # Handlers read it for the Server-Timing header (request.state.started).
        scope.setdefault("state", {})["started"] = started
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._reject_too_large(send_wrapper)
                return
            await self.app(scope, self._limited(receive), send_wrapper)
        except _BodyTooLarge:
            await self._reject_too_large(send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(template, scope["method"], str(status["code"])).inc()
            HTTP_LATENCY.labels(template).observe(time.perf_counter() - started)
            reset_request_id(token)

    def _limited(self, receive: Receive) -> Receive:
        """Counts body bytes of chunked uploads, which carry no Content-Length."""
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        return wrapped

    async def _reject_too_large(self, send: Send) -> None:
        body = _error_body(
            413,
            f"Request body too large: the limit is {self.max_body_bytes} bytes.",
            "request_too_large",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it as is (413) instead of
    wrapping it in a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body too large: the limit is {limit} bytes.")
