"""Build the gRPC aio server: both services, health, reflection, API key, message sizes, optional TLS.

``create_grpc_server(settings, engine)`` must be called with the event loop running (it starts the task
that mirrors ``engine.ready`` into the health service); the caller then ``await server.start()``.
On shutdown call ``await stop_grpc_server(server, grace)``: health turns NOT_SERVING for good (watchers
are told) before in-flight calls are drained.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc
from protos.gen.inference import grpc_service_pb2_grpc
from server.engine import Engine
from server.grpc import kserve, segmentation
from server.grpc.auth import ApiKeyInterceptor
from server.grpc.health import ReadinessHealth
from server.settings import Settings

logger = logging.getLogger(__name__)

SERVICE_NAMES = (segmentation.SERVICE_NAME, kserve.SERVICE_NAME)

KEEPALIVE_TIMEOUT_MS = 20_000  # an unanswered keepalive ping closes the connection after this long

_HEALTH: weakref.WeakKeyDictionary[grpc.aio.Server, ReadinessHealth] = weakref.WeakKeyDictionary()


def bind_address(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _read(path: Any, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise RuntimeError(f"cannot read gRPC TLS {what} {path}: {exc.strerror or exc}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when ``grpc_tls_cert`` and ``grpc_tls_key`` are set (both or neither)."""
    cert = settings.grpc_tls_cert
    key = settings.grpc_tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        raise RuntimeError("gRPC TLS needs both grpc_tls_cert and grpc_tls_key")
    return grpc.ssl_server_credentials([(_read(key, "key"), _read(cert, "certificate"))])


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """Bounds on connections that hold resources without using them: a client that never completes the
    HTTP/2 handshake, too many connections, idle or very old connections (GOAWAY), too many streams on one
    connection, and dead peers (keepalive pings). Clients' own pings are accepted every 10 s at most."""
    options = [
        ("grpc.server_handshake_timeout_ms", _ms(settings.http_header_timeout_s)),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        ("grpc.keepalive_time_ms", _ms(settings.grpc_keepalive_s)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if settings.grpc_max_connection_idle_s is not None:
        options.append(("grpc.max_connection_idle_ms", _ms(settings.grpc_max_connection_idle_s)))
    if settings.grpc_max_connection_age_s is not None:
        options.append(("grpc.max_connection_age_ms", _ms(settings.grpc_max_connection_age_s)))
        options.append(("grpc.max_connection_age_grace_ms", _ms(settings.request_timeout_s)))
    return options


def create_grpc_server(settings: Settings, engine: Engine) -> tuple[grpc.aio.Server, int]:
    """The configured, bound (not yet started) server and the port it bound (useful with port 0)."""
    max_bytes = settings.grpc_max_message_bytes
    options = [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        # Without this, Linux lets a second server bind the same port and silently share its traffic.
        ("grpc.so_reuseport", 0),
        *connection_options(settings),
    ]
    api_key = settings.api_key_value()
    interceptors = [ApiKeyInterceptor(api_key)] if api_key else []
    server = grpc.aio.server(interceptors=interceptors, options=options)

    segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(
        segmentation.SegmentationServicer(settings, engine), server
    )
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        kserve.KServeServicer(settings, engine), server
    )
    health = ReadinessHealth(engine, SERVICE_NAMES)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        [*SERVICE_NAMES, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    address = bind_address(settings.host, settings.grpc_port)
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind the gRPC server to {address}: {exc}") from exc
    if port == 0:
        raise RuntimeError(f"cannot bind the gRPC server to {address} (port in use?)")
    health.start()
    _HEALTH[server] = health
    logger.info(
        "gRPC server bound to %s (%s, max message %d bytes, API key %s)",
        bind_address(settings.host, port),
        "TLS" if credentials else "plaintext",
        max_bytes,
        "required" if api_key else "off",
    )
    return server, port


async def stop_grpc_server(server: grpc.aio.Server, grace: float | None) -> None:
    """Report NOT_SERVING, then stop accepting calls and let in-flight ones finish for ``grace`` seconds."""
    health = _HEALTH.pop(server, None)
    if health is not None:
        await health.shutdown()
    await server.stop(grace)
