"""API key check for every gRPC method except health, reflection and KServe's liveness/readiness.

The key is the REST one (``settings.api_key``), sent as metadata ``authorization: Bearer <key>`` or
``x-api-key: <key>``, compared in constant time as UTF-8 bytes. gRPC allows only printable ASCII in text
metadata, so a key with other characters is sent as binary metadata ``x-api-key-bin`` (its UTF-8 bytes). The exemptions mirror REST's public paths
(``/healthz``, ``/readyz``, ``/v2/health/live``, ``/v2/health/ready``): probes carry no secrets.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

EXEMPT_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
EXEMPT_METHODS = (
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
UNAUTHENTICATED_MESSAGE = (
    "missing or invalid API key (send 'authorization: Bearer <key>' or 'x-api-key: <key>')"
)


def presented_keys(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[bytes]:
    """The candidate keys found in request metadata."""
    keys: list[bytes] = []
    for name, value in metadata or ():
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        lowered = name.lower()
        if lowered == "x-api-key":
            keys.append(raw.strip())
        elif lowered == "x-api-key-bin":  # binary metadata: the key's bytes as they are
            keys.append(raw)
        elif lowered == "authorization":
            scheme, _, token = raw.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token:
                keys.append(token.strip())
    return keys


def key_matches(expected: bytes, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    # Every candidate is compared so the time taken does not depend on which one matched.
    results = [hmac.compare_digest(expected, key) for key in presented_keys(metadata)]
    return any(results)


def _method_service(method: str) -> str:
    # "/package.Service/Method" -> "package.Service"
    return method.lstrip("/").split("/", 1)[0]


def _rejecting_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        yield  # pragma: no cover - makes this an async generator

    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(abort, deserializer, serializer)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Reject calls without the configured API key (UNAUTHENTICATED)."""

    def __init__(
        self,
        api_key: str,
        exempt_services: Iterable[str] = EXEMPT_SERVICES,
        exempt_methods: Iterable[str] = EXEMPT_METHODS,
    ) -> None:
        self._expected = api_key.encode("utf-8")
        self._exempt_services = frozenset(exempt_services)
        self._exempt_methods = frozenset(exempt_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or method in self._exempt_methods
            or _method_service(method) in self._exempt_services
        ):
            return handler
        if key_matches(self._expected, handler_call_details.invocation_metadata):
            return handler
        return _rejecting_handler(handler)
