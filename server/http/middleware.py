"""One pure-ASGI middleware for what every request needs, in this order: request id, API key, body-size
limit (checked while the body streams in, never buffered first), metrics + access log, and a last-resort
handler that logs the traceback and answers a generic 500 (no stack trace reaches a client)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import DanetError, PayloadTooLarge, Unauthenticated
from server.http.errors import danet_error_response, error_response
from server.logging import request_id
from server.metrics import Metrics
from server.settings import Settings

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("server.http.access")

# Reachable without the API key: liveness/readiness for orchestrators, and the static web page (it carries
# no data; every call it makes sends the key the user types in).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"})
CLIENT_CLOSED = 499  # metrics and access log of a request whose client went away (nginx's number)
MULTIPART_ALLOWANCE = 64 * 1024  # boundaries and part headers around the image
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        key = settings.api_key_value()
        # ASGI decodes header bytes as latin-1; the key is compared as the UTF-8 bytes a client sends
        self.api_key = key.encode("utf-8") if key is not None else None
        self.public_paths = PUBLIC_PATHS | ({"/metrics"} if settings.metrics_public else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False}
        extra_headers = [(b"x-request-id", rid.encode())]
        if self.settings.replica_id:
            extra_headers.append((b"x-danet-replica", self.settings.replica_id.encode("latin-1")))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *extra_headers]
            await send(message)

        try:
            if self.api_key is not None and path not in self.public_paths and method != "OPTIONS":
                self._authenticate(headers)
            # public routes say more to a caller that sent the key (``/readyz``: models and providers)
            scope.setdefault("state", {})["authenticated"] = self.api_key is None or self._has_key(headers)
            limit = self.settings.max_upload_bytes
            if headers.get("content-type", "").lower().startswith("multipart/"):
                limit += MULTIPART_ALLOWANCE
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(
                    f"request body of {declared} bytes exceeds the limit of {self.settings.max_upload_bytes} bytes"
                )
            await self.app(scope, _limited(receive, limit, self.settings.max_upload_bytes), send_with_id)
        except DanetError as exc:
            if not state["started"]:
                await danet_error_response(path, exc)(scope, receive, send_with_id)
        except ClientDisconnect:  # the client left (or was dropped as too slow) while its body was read
            state["status"] = CLIENT_CLOSED
        except asyncio.CancelledError:  # the client left after its body (server.http.disconnect)
            state["status"] = CLIENT_CLOSED
            raise
        except Exception:
            logger.exception("unhandled error while serving %s %s", method, path)
            if not state["started"]:
                await error_response(path, 500, "internal", "internal server error")(
                    scope, receive, send_with_id
                )
        finally:
            elapsed = time.perf_counter() - started
            # the route template, never the raw path: unknown paths must not grow the label set
            label = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(label, method, str(state["status"])).inc()
            self.metrics.latency.labels(label, method).observe(elapsed)
            if self.settings.access_log:
                access_logger.info(
                    "%s %s %s %.1fms",
                    method,
                    path,
                    state["status"],
                    elapsed * 1000,
                    extra={
                        "method": method,
                        "path": path,
                        "status": state["status"],
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id.reset(token)

    def _has_key(self, headers: dict[str, str]) -> bool:
        try:
            self._authenticate(headers)
        except Unauthenticated:
            return False
        return True

    def _authenticate(self, headers: dict[str, str]) -> None:
        assert self.api_key is not None
        provided = headers.get("x-api-key")
        if provided is None:
            scheme, _, credentials = headers.get("authorization", "").partition(" ")
            provided = credentials.strip() if scheme.lower() == "bearer" else None
        if provided is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        if not hmac.compare_digest(provided.encode("latin-1"), self.api_key):
            raise Unauthenticated("invalid API key")


def _limited(receive: Receive, limit: int, advertised: int) -> Receive:
    """Wrap ``receive`` so that reading past ``limit`` body bytes raises PayloadTooLarge mid-stream."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {advertised} bytes")
        return message

    return wrapped
