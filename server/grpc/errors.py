"""Domain errors -> gRPC status codes: the one place where that mapping lives.

Servicer methods raise ``server.errors.DanetError`` subclasses (or let the engine raise them); the
``translate_errors`` decorator turns them into ``context.abort(code, message)``. Anything else is a bug:
its traceback goes to the log and the client sees a generic INTERNAL without details.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.errors import (
    Cancelled,
    DanetError,
    DeadlineExceeded,
    InvalidImage,
    InvalidOption,
    ModelLoadError,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error"

# Checked in order; the first matching class wins (subclasses before their bases).
_STATUS_BY_ERROR: tuple[tuple[type[DanetError], grpc.StatusCode], ...] = (
    (InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMediaType, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidOption, grpc.StatusCode.INVALID_ARGUMENT),
    # A per-request property (too many pixels): retrying cannot help, unlike RESOURCE_EXHAUSTED.
    (PayloadTooLarge, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (ModelLoadError, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception (logs unexpected ones)."""
    if isinstance(exc, DanetError):
        for error_type, code in _STATUS_BY_ERROR:
            if isinstance(exc, error_type):
                return code, exc.message
        logger.error("unmapped domain error %s: %s", type(exc).__name__, exc.message)
        return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
    logger.error("unhandled error in a gRPC handler", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _is_passthrough(exc: BaseException) -> bool:
    # context.abort() raises AbortError: the status is already set, let grpc deliver it.
    return isinstance(exc, grpc.aio.AbortError | asyncio.CancelledError)


def translate_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Decorate a unary-response servicer method ``(self, request, context)``."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except BaseException as exc:
            if _is_passthrough(exc) or not isinstance(exc, Exception):
                raise
            code, message = status_for(exc)
            await context.abort(code, message)

    return wrapper


def translate_stream_errors(
    method: Callable[..., AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    """Decorate a streaming-response servicer method (an async generator)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for reply in method(self, request, context):
                yield reply
        except BaseException as exc:
            if _is_passthrough(exc) or not isinstance(exc, Exception):
                raise
            code, message = status_for(exc)
            await context.abort(code, message)

    return wrapper
