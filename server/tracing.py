"""OpenTelemetry tracing, off by default: spans for decode, queue, inference and encode under one server
span per request, whose parent is the caller's W3C ``traceparent`` (REST header, gRPC metadata).

On when ``Settings.tracing`` is set, or when OpenTelemetry's standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is (``OTEL_SDK_DISABLED=true`` turns it off). Spans go to an OTLP
exporter configured by the ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` or
``http/protobuf``, the default; endpoint, headers, ``OTEL_SERVICE_NAME`` ...). Off, nothing of
OpenTelemetry is imported and every hook is a constant no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from server.settings import Settings

logger = logging.getLogger(__name__)

# span attributes
MODEL = "danet.model"
VERSION = "danet.model_version"
BATCH = "danet.batch_size"
IMAGES = "danet.images"
HEIGHT = "danet.image.height"
WIDTH = "danet.image.width"
BYTES = "danet.bytes"

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Step(Protocol):
    def set(self, key: str, value: Any) -> None: ...


class _NoStep:
    def set(self, key: str, value: Any) -> None:
        pass


NO_STEP = _NoStep()


class NoTracing:
    """Tracing off: nothing imported, nothing recorded."""

    enabled = False

    @contextlib.contextmanager
    def request(self, name: str, carrier: Mapping[str, Any], attributes: dict[str, Any]) -> Iterator[Step]:
        yield NO_STEP

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[Step]:
        yield NO_STEP

    def record(self, name: str, start: float, end: float, attributes: dict[str, Any]) -> None:
        pass

    def shutdown(self) -> None:
        pass


class _SpanStep:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)


class OtelTracing:
    """Spans through an SDK ``TracerProvider`` of our own (the global one is left alone)."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self.provider = provider
        self._clock_offset = time.time_ns() - time.monotonic_ns()  # monotonic instants -> epoch ns
        self._tracer = provider.get_tracer("danet-serve")
        self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def request(self, name: str, carrier: Mapping[str, Any], attributes: dict[str, Any]) -> Iterator[Step]:
        """The request's server span, child of the caller's ``traceparent`` when it sends a valid one."""
        parent = self._propagator.extract(carrier=carrier)
        with self._tracer.start_as_current_span(
            name, context=parent, kind=self._trace.SpanKind.SERVER, attributes=attributes
        ) as span:
            yield _SpanStep(span)

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[Step]:
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield _SpanStep(span)

    def record(self, name: str, start: float, end: float, attributes: dict[str, Any]) -> None:
        """A span after the fact, from ``time.monotonic`` instants (the queue wait, the run)."""
        offset = self._clock_offset  # one offset for every span: adjacent spans meet exactly
        span = self._tracer.start_span(name, start_time=offset + round(start * 1e9), attributes=attributes)
        span.end(end_time=offset + round(end * 1e9))

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor holds


Tracing = NoTracing | OtelTracing


def grpc_carrier(context: Any) -> dict[str, Any]:
    """A gRPC call's metadata as a carrier for ``traceparent`` (gRPC keys are lower-case)."""
    return dict(context.invocation_metadata() or ())


def wanted(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(settings.tracing or any(environ.get(name) for name in _ENDPOINTS))


def from_settings(settings: Settings, environ: Mapping[str, str] = os.environ) -> Tracing:
    """No tracing unless asked for; else an SDK provider exporting over OTLP."""
    if not wanted(settings, environ):
        return NoTracing()
    tracing = with_exporter(_otlp_exporter(environ), batch=True)
    logger.info("tracing on: OTLP over %s", _protocol(environ))
    return tracing


def with_exporter(exporter: SpanExporter, *, batch: bool = False) -> OtelTracing:
    """Tracing into ``exporter`` (tests: the SDK's in-memory exporter, synchronously)."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "tracing is on but OpenTelemetry is not installed: pip install 'danet-serve[tracing]'"
        ) from exc
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES still win over this default
    provider = TracerProvider(resource=Resource.create({"service.name": "danet-serve"}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return OtelTracing(provider)


def _protocol(environ: Mapping[str, str]) -> str:
    return (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = _protocol(environ)
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        else:
            raise RuntimeError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported (grpc, http/protobuf)"
            )
    except ImportError as exc:
        raise RuntimeError(
            "tracing is on but the OTLP exporter is not installed: pip install 'danet-serve[tracing]'"
        ) from exc
    exporter: SpanExporter = OTLPSpanExporter()  # endpoint, headers, timeout from the OTEL_* variables
    return exporter
