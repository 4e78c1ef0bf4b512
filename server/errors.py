"""Protocol-neutral domain errors.

The engine and the image helpers raise these; each adapter (REST, KServe v2 REST, gRPC) maps them to its own
status codes once, in its own module. ``code`` is the stable machine-readable name that REST clients see in
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import ClassVar


class DanetError(Exception):
    """Base class: a request (or start-up) failed for a reason we can explain to the caller."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidImage(DanetError):
    """The bytes are not a decodable image (HTTP 400)."""

    code = "invalid_image"


class UnsupportedMediaType(DanetError):
    """The upload is of a type we do not accept (HTTP 415)."""

    code = "unsupported_media_type"


class PayloadTooLarge(DanetError):
    """Too many bytes or too many pixels (HTTP 413)."""

    code = "payload_too_large"


class InvalidOption(DanetError):
    """A request option or tensor is malformed or not supported by the model (HTTP 422 / 400 on /v2)."""

    code = "invalid_option"


class ModelNotFound(DanetError):
    """No model is served under that name (HTTP 404)."""

    code = "model_not_found"


class Overloaded(DanetError):
    """The bounded request queue is full; retry later (HTTP 503 + Retry-After)."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(DanetError):
    """Models are still loading or warming up, or the server is shutting down (HTTP 503)."""

    code = "not_ready"


class Unauthenticated(DanetError):
    """Missing or wrong API key (HTTP 401)."""

    code = "unauthenticated"


class DeadlineExceeded(DanetError):
    """The request waited or ran longer than its deadline (HTTP 504)."""

    code = "deadline_exceeded"


class ModelLoadError(DanetError):
    """A model file is missing, unreadable or does not follow the contract (start-up failure)."""

    code = "model_load_error"


class Cancelled(DanetError):
    """The caller went away (closed its connection, cancelled its call) and its work was stopped."""

    code = "cancelled"
