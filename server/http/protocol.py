"""uvicorn's HTTP/1.1 protocol with the limits uvicorn does not have: a header deadline, a body deadline with a
minimum rate, and a cap on open connections.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the size of a request head, but a
client that sends its headers or its body one byte at a time, or opens connections and sends nothing, holds
them forever. These limits live at the connection, below the ASGI app, so they also cover requests no route
reads, and a timed-out request never reaches (or leaves) the app half-read:

- header deadline: from the connection (or from the first byte of the next request on a kept-alive one) to
  the end of its head, ``http_header_timeout_s``; then ``408`` and the connection is closed;
- body deadline: ``http_body_timeout_s`` after the head, extended by ``1 / http_body_min_rate`` seconds per
  byte received (a minimum average rate); then ``408`` if no reply has started, and the connection is closed
  (the app's ``receive()`` reports a disconnect, so its work stops as for a client that left);
- write deadline: once a reply fills the socket's buffers (the transport pauses writing), the client has
  ``http_write_timeout_s``, extended by ``1 / http_body_min_rate`` seconds per byte it reads, to take it;
  then the connection is aborted and its buffered reply dropped (without this, a client that never reads
  holds its connection and the whole encoded reply, and closing the connection waits for the buffer);
- ``max_connections``: one connection more is answered ``503`` (``Retry-After``) and closed at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.settings import Settings

#: ``struct tcp_info`` (linux/tcp.h): ``tcpi_bytes_acked`` (u64) at byte 120, present since Linux 4.1.
_BYTES_ACKED = 120
_TCP_INFO_SIZE = _BYTES_ACKED + 8


def _reply(status: int, phrase: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\nconnection: close\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus the deadlines and the connection cap above (limits set by ``guarded_protocol``)."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    body_min_rate: ClassVar[int] = 16 * 1024
    write_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 512
    retry_after_s: ClassVar[int] = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_seen = 0
        self._write_deadline: asyncio.TimerHandle | None = None
        self._write_paused_at = 0.0
        self._write_taken = 0

    # --- connection ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over = len(self.connections) >= self.max_connections  # the set holds the open ones, not this one
        super().connection_made(transport)
        if over:
            transport.write(
                _reply(
                    503,
                    "Service Unavailable",
                    "overloaded",
                    f"too many open connections (max_connections={self.max_connections}); retry later",
                    f"retry-after: {self.retry_after_s}\r\n",
                )
            )
            transport.close()
            return
        self._arm(self.header_timeout_s, self._header_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_write()
        super().connection_lost(exc)

    # --- flow control: a reply the client does not read --------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused_at = time.monotonic()
        self._write_taken = self._taken()
        self._disarm_write()
        self._write_deadline = self.loop.call_later(self.write_timeout_s, self._write_check)

    def resume_writing(self) -> None:
        self._disarm_write()
        super().resume_writing()

    def _taken(self) -> int:
        """Bytes the client has taken so far: acknowledged by its TCP stack (``tcpi_bytes_acked``, Linux), or
        elsewhere minus what the transport still buffers. The transport's buffer alone moves in steps of
        half the kernel's send buffer (megabytes), so a client reading steadily would look stalled."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sys.platform == "linux":  # the layout below is Linux's
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
            except OSError:
                info = b""
            if len(info) >= _TCP_INFO_SIZE:
                return int.from_bytes(info[_BYTES_ACKED : _BYTES_ACKED + 8], sys.byteorder)
        return -self.transport.get_write_buffer_size()

    def _disarm_write(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    # --- parser callbacks --------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.header_timeout_s, self._header_expired)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._body_started = time.monotonic()
        self._body_seen = 0
        self._arm(self.body_timeout_s, self._body_check)

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # --- deadlines ---------------------------------------------------------------------------------
    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        message = f"request headers not received within {self.header_timeout_s:g} s (http_header_timeout_s)"
        self._drop(message)

    def _body_check(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        allowed_until = self._body_started + self.body_timeout_s + self._body_seen / self.body_min_rate
        remaining = allowed_until - time.monotonic()
        if remaining > 0:  # the bytes received so far bought more time
            self._arm(remaining, self._body_check)
            return
        message = (
            f"request body too slow: {self._body_seen} bytes in {time.monotonic() - self._body_started:.0f} s "
            f"(http_body_timeout_s={self.body_timeout_s:g}, http_body_min_rate={self.body_min_rate} B/s)"
        )
        self._drop(message)

    def _write_check(self) -> None:
        """Still paused: abort unless the bytes the client has read since the pause bought more time. Runs
        on a closing transport too (``close()`` waits for the buffer to drain, so it would never end)."""
        self._write_deadline = None
        buffered = self.transport.get_write_buffer_size()
        read = max(0, self._taken() - self._write_taken)
        remaining = (
            self._write_paused_at + self.write_timeout_s + read / self.body_min_rate - time.monotonic()
        )
        if remaining > 0:
            self._write_deadline = self.loop.call_later(remaining, self._write_check)
            return
        cycle = self.cycle
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        self.logger.info(
            "aborting a connection from %s that does not read its reply: %d bytes read and %d still buffered "
            "after %.0f s (http_write_timeout_s=%g, http_body_min_rate=%d B/s)",
            self.client,
            read,
            buffered,
            time.monotonic() - self._write_paused_at,
            self.write_timeout_s,
            self.body_min_rate,
        )
        self.transport.abort()

    def _drop(self, message: str) -> None:
        """408 unless a reply has started, then close; the app's ``receive()`` sees a disconnect."""
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_reply(408, "Request Timeout", "request_timeout", message))
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        self.logger.info("closing a slow connection from %s: %s", self.client, message)
        self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this server's limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout_s": settings.http_header_timeout_s,
            "body_timeout_s": settings.http_body_timeout_s,
            "body_min_rate": settings.http_body_min_rate,
            "write_timeout_s": settings.http_write_timeout_s,
            "max_connections": settings.max_connections,
            "retry_after_s": settings.retry_after_s,
        },
    )
