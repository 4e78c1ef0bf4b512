"""The one exception type every client failure is reported as."""

from __future__ import annotations


class DanetClientError(Exception):
    """A request could not be made or the server refused it.

    ``code`` is the server's error code when it sent one (gRPC status name such as ``"NOT_FOUND"``, or the
    REST ``error.code`` such as ``"model_not_found"``), ``"invalid_input"`` when the client rejected its
    own input before sending, and ``"unreachable"`` when no server answered. ``status`` is the HTTP status
    for REST replies.
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    @property
    def unreachable(self) -> bool:
        """True when no server answered at the address (wrong address, server down)."""
        return self.code == "unreachable"

    def __str__(self) -> str:
        return self.message
