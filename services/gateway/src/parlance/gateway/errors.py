"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with OpenAI's
status codes, and the one place where every failure becomes such an answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from parlance.gateway.headers import ResponseHeaders

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client sees. Raise it anywhere in a request; the handler shapes it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, request: Request | None = None) -> JSONResponse:
        # Headers decided earlier in the request (x-ratelimit-*) go on errors too.
        headers = dict(ResponseHeaders.of(request)) if request else {}
        headers.update(self.headers)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized(message: str = "Incorrect API key provided.") -> APIError:
    return APIError(401, message, code="invalid_api_key")


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(404, message, param=param, code="not_found")


def content_filtered(message: str) -> APIError:
    # Azure OpenAI's convention for a prompt refused by the content filter.
    return APIError(400, message, param="messages", code="content_filter")


def rate_limited(message: str, retry_after_s: float, headers: dict[str, str]) -> APIError:
    retry = max(1, int(retry_after_s + 0.999))
    return APIError(
        429,
        message,
        type="requests",
        code="rate_limit_exceeded",
        headers={**headers, "Retry-After": str(retry)},
    )


def service_unavailable(message: str, retry_after_s: int) -> APIError:
    return APIError(
        503,
        message,
        type="server_error",
        code="service_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


_JSON_BODY_NEEDED = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
)
# Where FastAPI found a value (the first part of a location): not part of the parameter's name.
_SOURCES = ("body", "query", "path", "header")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    error, loc, expected = _most_telling(errors, exc.body)
    if error.get("type") == "json_invalid":
        return _JSON_BODY_NEEDED, None
    if loc and loc[0] in _SOURCES:  # first only: a field may be called `path`
        loc = loc[1:]
    names = [str(p) for p in loc]
    param = ".".join(names) or None
    if param is None and error.get("type") == "missing":
        return _JSON_BODY_NEEDED, None  # no body at all
    if expected:
        return f"Invalid type for '{param}': expected one of {', '.join(expected)}.", param
    msg = str(error.get("msg", "Invalid value")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    if error.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: '{param}'.", param
    return f"Invalid value for '{param}': {msg}", param


def _in_body(error: Any, body: Any) -> list[bool]:
    """For each part of a body error's location, whether it names a key or an index of the
    request as sent, rather than a union member's tag (`str`, `list[str]`, a model's name),
    which pydantic puts in the location too. The name a `missing` error reports is a field's,
    though absent from the body."""
    loc = tuple(error.get("loc", ()))
    flags = [True]  # "body": the source
    node = body
    for i, part in enumerate(loc[1:], start=1):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
            flags.append(True)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            flags.append(True)
        else:
            flags.append(i == len(loc) - 1 and error.get("type") == "missing")
    return flags


def _most_telling(errors: Sequence[Any], body: Any) -> tuple[Any, tuple[Any, ...], list[str]]:
    """The error to report, its location without union tags, and the union's member types
    when the value matched none of them by type.

    A value checked against a union (`str | list[str]`) fails once per member, each error's
    location holding the member's tag (`input.str`, `input.list[str].0`): the first error is
    then the first member's type mismatch, which says nothing useful about a list whose item
    is wrong. The error that got furthest into a member says what is wrong. Tags are told from
    field names by the body itself: a tag is no key of what was sent (so a dict's own keys,
    `metadata: {"Session": 1}`, are never taken for tags)."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if not loc or loc[0] != "body" or not isinstance(body, dict | list):
        return first, loc, []
    for k, (part, sent) in enumerate(zip(loc, _in_body(first, body), strict=True)):
        if sent or not isinstance(part, str):
            continue
        group = [e for e in errors if tuple(e.get("loc", ()))[:k] == loc[:k] and len(e["loc"]) > k]
        tags = list(dict.fromkeys(e["loc"][k] for e in group if isinstance(e["loc"][k], str)))
        if len(tags) < 2:
            continue
        # A type mismatch at the member's top says only that the value is not of that type.
        telling = [
            e for e in group if len(e["loc"]) > k + 1 or not str(e.get("type")).endswith("_type")
        ]
        if not telling:
            return first, loc[:k], tags
        best = max(telling, key=lambda e: len(e["loc"]))
        # Nested unions (a list of `TextPart | ImagePart`) leave more than one tag.
        kept = _in_body(best, body)
        return best, tuple(p for p, sent in zip(best["loc"], kept, strict=True) if sent), []
    return first, loc, []


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_STATUSES = {
    "400": "Invalid request",
    "401": "Missing or incorrect API key",
    "403": "Not allowed for this key",
    "404": "Not found (or another user's)",
    "409": "Conflicts with the current state (an id that exists, a model in use or refused)",
    "413": "Request body too large",
    "429": "Rate or concurrency limit reached",
    "503": "A dependency is unavailable; retry after Retry-After",
}


def document_errors(app: FastAPI) -> None:
    """The OpenAPI document shows the errors the gateway really answers: OpenAI-shaped, with
    OpenAI's status codes, instead of FastAPI's 422 (validation errors are 400 here), so that
    clients and schema-driven tests (schemathesis) see the truth."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
            ref = {"$ref": "#/components/schemas/Error"}
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    for status, description in _ERROR_STATUSES.items():
                        responses.setdefault(
                            status,
                            {
                                "description": description,
                                "content": {"application/json": {"schema": ref}},
                            },
                        )
            for unused in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _allowed_methods(request: Request) -> str:
    """Every method of every route on this path: Starlette's 405 names only the first route's
    (so `GET, POST /v1/conversations`, two routes, answered `Allow: GET`)."""
    matching = [r for r in request.app.router.routes if r.matches(request.scope)[0] != Match.NONE]
    # A literal path (/v1/conversations/search) is its own resource, not an id of the
    # templated one beside it.
    literal = [r for r in matching if "{" not in getattr(r, "path", "{")]
    methods: set[str] = set()
    for route in literal or matching:
        methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response(request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return invalid_request(message, param=param).response(request)

    @app.exception_handler(json.JSONDecodeError)
    async def _json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return invalid_request("We could not parse the JSON body of your request.").response(
            request
        )

    @app.exception_handler(UnicodeEncodeError)
    async def _unicode(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON may escape a lone surrogate ("\ud800"): valid JSON, but no text that UTF-8 (and
        # so protobuf) can carry. It surfaces where the request's text becomes a gRPC message.
        return invalid_request(
            "The request contains text that is not valid Unicode (an unpaired surrogate)."
        ).response(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        err = APIError(exc.status_code, str(exc.detail), code=kinds.get(exc.status_code))
        err.headers = headers
        return err.response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(
            500, "The server had an error while processing your request.", type="server_error"
        ).response()
