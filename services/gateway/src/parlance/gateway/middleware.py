"""ASGI middleware: request ids, the bearer key checked before the body is read, request body
size limits per route, the failed-authentication throttle, and HTTP metrics.

Written as plain ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched
and their duration is measured to the last byte.

Why the key is checked here: a route's dependencies run only after FastAPI has read and
parsed the body, so a client with a wrong (or no) key could make the gateway read and parse
up to the body limit per request, and as many requests as it liked (issue 14: four such
clients slowed another user's requests 43x). Here a request to /v1/ without a valid key is
answered 401 from its headers alone, and an address that keeps failing gets 429 (a throttled
address's failures cost no Redis call). The route's own dependency checks the key again (a
cached lookup), which keeps the routes correct on their own.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parlance.common.request_id import new_request_id, reset_request_id, set_request_id
from parlance.gateway.auth import digest
from parlance.gateway.auth_throttle import FailedAuthThrottle
from parlance.gateway.metrics import AUTH_FAILURES, HTTP_LATENCY, HTTP_REQUESTS

if TYPE_CHECKING:
    from parlance.gateway.state import GatewayState

log = logging.getLogger(__name__)

# A client's X-Request-ID is kept only when it is a plain token: anything else (non-ASCII,
# which gRPC metadata cannot carry; spaces or line breaks, which could forge log lines) is
# replaced by a generated id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _error_body(message: str, type_: str, code: str) -> bytes:
    # Serialized as the app's JSONResponse errors are (compact, UTF-8), so that every error
    # body looks alike whichever layer answered.
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def request_id_from(value: str | None) -> str:
    """The client's request id when it is a plain token, else a new one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def first_headers(scope: Scope) -> dict[str, str]:
    """The request's headers, the first of each name: what Starlette's `request.headers.get`
    (and so every route) reads. Taking the last instead would let a request carry a valid key
    for this check and a guessed one for the route's, past the failed-auth throttle."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        # The default limit; per-route limits come from the settings (body_limit below).
        self.max_body_bytes = max_body_bytes
        self._throttle: FailedAuthThrottle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = first_headers(scope)
        request_id = request_id_from(headers.get("x-request-id"))
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
                    (b"x-request-id", request_id.encode("ascii")),
                ]
            await send(message)

        limit = self.body_limit(scope)
        try:
            if await self._refused_before_body(scope, headers, send_wrapper):
                return
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._reject_too_large(send_wrapper, limit)
                return
            await self.app(scope, self._limited(receive, limit), send_wrapper)
        except _BodyTooLarge:
            await self._reject_too_large(send_wrapper, limit)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(template, scope["method"], str(status["code"])).inc()
            HTTP_LATENCY.labels(template).observe(time.perf_counter() - started)
            reset_request_id(token)

    # -- per-route body limits ---------------------------------------------------------------

    def body_limit(self, scope: Scope) -> int:
        """Chat and moderation take long inputs; the conversation routes carry a title or
        feedback (a correction at most 100,000 characters); admin routes carry small JSON."""
        state = _state(scope)
        if state is None:
            return self.max_body_bytes
        settings = state.settings
        path: str = scope.get("path", "")
        if path.startswith("/v1/admin/"):
            return min(settings.max_admin_request_bytes, self.max_body_bytes)
        if path.startswith("/v1/conversations"):
            return min(settings.max_conversation_request_bytes, self.max_body_bytes)
        return self.max_body_bytes

    def _limited(self, receive: Receive, limit: int) -> Receive:
        """Counts body bytes of chunked uploads, which carry no Content-Length."""
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        return wrapped

    async def _reject_too_large(self, send: Send, limit: int) -> None:
        body = _error_body(
            f"Request body too large: the limit is {limit} bytes.",
            "invalid_request_error",
            "request_too_large",
        )
        await _send_json(send, 413, body)

    # -- the key, before the body ------------------------------------------------------------

    async def _refused_before_body(self, scope: Scope, headers: dict[str, str], send: Send) -> bool:
        """Answers 401 or 429 for an API request without a valid key; True if it did."""
        path: str = scope.get("path", "")
        state = _state(scope)
        if state is None or not path.startswith("/v1/") or scope.get("method") == "OPTIONS":
            return False
        admin = path.startswith("/v1/admin/")
        scheme, _, key = headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and key:
            try:
                if await _known_key(state, key, admin):
                    # A valid key passes even from an address that is throttled: users
                    # behind one address (a NAT) are not locked out by a neighbour.
                    return False
            except Exception:
                # The key store is unreachable and this key is not cached: the route's own
                # check decides (and answers as the error handlers do).
                log.warning("key store unreachable while checking a key before the body")
                return False
        throttle = self._throttle_of(state)
        address = _client_address(scope)
        wait = throttle.blocked_for(address) or await throttle.failed(address)
        if wait > 0:
            AUTH_FAILURES.labels("throttled").inc()
            await _send_throttled(send, wait)
            return True
        AUTH_FAILURES.labels("rejected").inc()
        if scheme.lower() != "bearer" or not key:
            message = "This route needs the admin key as a Bearer token." if admin else _NO_KEY
        else:
            message = "Incorrect API key provided."
        await _send_json(
            send,
            401,
            _error_body(message, "invalid_request_error", "invalid_api_key"),
            [(b"www-authenticate", b"Bearer")],
        )
        return True

    def _throttle_of(self, state: GatewayState) -> FailedAuthThrottle:
        if self._throttle is None:
            self._throttle = FailedAuthThrottle(
                state.redis, state.settings.auth_failures_per_minute
            )
        return self._throttle


async def _known_key(state: GatewayState, key: str, admin: bool) -> bool:
    """A user's key, or on admin routes also the admin key (a user key there passes on to
    the route, which answers 403)."""
    admin_key = state.settings.admin_key
    if admin and admin_key and hmac.compare_digest(digest(key), digest(admin_key)):
        return True
    return await state.keys.authenticate(key) is not None


def _state(scope: Scope) -> GatewayState | None:
    app: Any = scope.get("app")
    return getattr(getattr(app, "state", None), "gateway", None)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _send_throttled(send: Send, wait_s: float) -> None:
    retry = max(1, int(wait_s + 0.999))
    body = _error_body(
        "Too many requests with an invalid API key from this address. "
        f"Please try again in {retry}s.",
        "requests",
        "rate_limit_exceeded",
    )
    await _send_json(send, 429, body, [(b"retry-after", str(retry).encode())])


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it as is (413) instead of
    wrapping it in a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body too large: the limit is {limit} bytes.")
