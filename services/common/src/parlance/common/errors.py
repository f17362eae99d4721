"""Domain errors shared by the services, and their one mapping onto gRPC status codes.

Servicers raise these; `ErrorInterceptor` turns them into statuses so no servicer needs
try/except boilerplate, and an unexpected exception becomes INTERNAL with the details logged,
not sent.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)


# Trailing metadata that carries an OpenAI error code (`code` of the HTTP error) from a service
# to the gateway, for errors whose clients act on the code (OpenAI's SDKs and apps check
# `context_length_exceeded` to shorten the conversation).
ERROR_CODE_KEY = "parlance-error-code"


class ParlanceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # The OpenAI error code the gateway answers with; None leaves it to the status code.
    openai_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidArgument(ParlanceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ContextLengthExceeded(InvalidArgument):
    """The prompt leaves no room for an answer in the model's context window."""

    openai_code = "context_length_exceeded"


class NotFound(ParlanceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ParlanceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(ParlanceError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ParlanceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ParlanceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


def _details(exc: ParlanceError) -> str:
    # "param: message" lets the gateway point OpenAI's `param` at the offending field.
    return f"{exc.param}: {exc.message}" if exc.param else exc.message


def _trailing(exc: ParlanceError) -> tuple[tuple[str, str], ...]:
    return ((ERROR_CODE_KEY, exc.openai_code),) if exc.openai_code else ()


def openai_code_of(exc: grpc.aio.AioRpcError) -> str | None:
    """The OpenAI error code a service sent with its status (see ERROR_CODE_KEY)."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CODE_KEY:
            return value if isinstance(value, str) else value.decode()
    return None


def split_details(details: str | None) -> tuple[str | None, str]:
    """Inverse of the details format above: (param, message)."""
    details = details or ""
    head, sep, tail = details.partition(": ")
    if sep and head and " " not in head and len(head) < 64:
        return head, tail
    return None, details


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps ParlanceError (and anything unexpected) onto gRPC status codes."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            return _wrap_unary_unary(handler, method)
        # Only handlers that are async generators: the health service's Watch writes its
        # messages with context.write() from a coroutine, and passes through as it is.
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            return _wrap_unary_stream(handler, method)
        return handler


def _wrap_unary_unary(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await inner(request, context)
        except ParlanceError as exc:
            await context.abort(exc.code, _details(exc), trailing_metadata=_trailing(exc))
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return grpc.unary_unary_rpc_method_handler(
        unary_unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _wrap_unary_stream(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    inner = handler.unary_stream

    async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in inner(request, context):
                yield item
        except ParlanceError as exc:
            await context.abort(exc.code, _details(exc), trailing_metadata=_trailing(exc))
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return grpc.unary_stream_rpc_method_handler(
        unary_stream,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
