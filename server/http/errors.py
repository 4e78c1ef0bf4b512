"""Domain errors -> HTTP, defined once for the REST adapter.

Plain routes answer ``{"error": {"code": ..., "message": ...}}``; KServe v2 routes (``/v2``) answer the
protocol's ``{"error": "message"}``, which tritonclient parses.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

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

STATUS: dict[type[DanetError], int] = {
    InvalidImage: 400,
    Unauthenticated: 401,
    ModelNotFound: 404,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidOption: 422,
    ModelLoadError: 500,
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
    Cancelled: 499,
}
KSERVE_PREFIX = "/v2"
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_option",
    499: "cancelled",
    500: "internal",
    503: "unavailable",
}


def is_kserve(path: str) -> bool:
    return path == KSERVE_PREFIX or path.startswith(KSERVE_PREFIX + "/")


def status_of(exc: DanetError, *, kserve: bool = False) -> int:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    if kserve and status == 422:
        return 400  # the protocol reports malformed requests as 400
    return status


def error_response(
    path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, object] = (
        {"error": message} if is_kserve(path) else {"error": {"code": code, "message": message}}
    )
    return JSONResponse(body, status_code=status, headers=headers)


def danet_error_response(path: str, exc: DanetError) -> JSONResponse:
    status = status_of(exc, kserve=is_kserve(path))
    headers: dict[str, str] = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(max(0, math.ceil(exc.retry_after_s)))
    elif isinstance(exc, NotReady):
        headers["Retry-After"] = "1"
    elif isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500 and not isinstance(exc, NotReady | Overloaded):
        logger.error("request failed: %s", exc.message)
    return error_response(path, status, exc.code, exc.message, headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DanetError)
    async def _danet(request: Request, exc: DanetError) -> JSONResponse:
        return danet_error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path", "body"))
            parts.append(
                f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
            )
        message = "; ".join(parts) or "invalid request"
        status = 400 if is_kserve(request.url.path) else 422
        return error_response(request.url.path, status, "invalid_option", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error_response(
            request.url.path, exc.status_code, code, str(exc.detail), dict(exc.headers or {})
        )
