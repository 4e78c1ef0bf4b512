"""OpenTelemetry tracing: spans for decode, queue, inference and encode under the request's server span,
parented by the caller's W3C traceparent (REST and gRPC), read from the SDK's in-memory exporter; off by
default without importing OpenTelemetry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from protos.gen.inference import grpc_service_pb2 as pb
from protos.gen.inference import grpc_service_pb2_grpc as pb_grpc
from server import tracing
from server.settings import Settings
from tests.conftest import encode, make_scene
from tests.grpc.harness import ServerThread, settings_for
from tests.server.conftest import AppFactory

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
IMAGES = np.stack([make_scene(24, 40, seed=3), make_scene(24, 40, seed=4)])
STEPS = ("decode", "queue", "inference", "encode")


def traced(engine: Any) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    engine.observer.tracing = tracing.with_exporter(exporter)
    return exporter


def check_trace(exporter: InMemorySpanExporter, request_name: str, images: int) -> dict[str, Any]:
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {request_name, *STEPS}, sorted(spans)
    root = spans[request_name]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.kind.name == "SERVER"
    for step in STEPS:
        span = spans[step]
        assert span.context.trace_id == root.context.trace_id, step
        assert span.parent is not None and span.parent.span_id == root.context.span_id, step
        assert span.attributes[tracing.MODEL] == "tiny" and span.attributes[tracing.VERSION] == "1", step
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, step
    assert spans["queue"].end_time <= spans["inference"].start_time + 1  # the wait, then the run
    assert spans["inference"].attributes[tracing.BATCH] == images
    assert spans["inference"].attributes[tracing.IMAGES] == images
    assert spans["decode"].attributes[tracing.BYTES] > 0 or request_name.endswith("Segment")
    return spans


def test_rest_infer_spans_follow_the_traceparent(app_factory: AppFactory) -> None:
    client, engine = app_factory()
    exporter = traced(engine)
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(IMAGES.shape),
                "data": IMAGES.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "labels"}],
    }
    response = client.post("/v2/models/tiny/infer", json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    spans = check_trace(exporter, "POST /v2/models/{model}/infer", 2)
    assert spans["encode"].attributes[tracing.BYTES] == len(response.content)


def test_rest_segment_spans(app_factory: AppFactory) -> None:
    client, engine = app_factory()
    exporter = traced(engine)
    response = client.post(
        "/segment?format=index",
        content=encode(IMAGES[0]),
        headers={"content-type": "image/png", "traceparent": TRACEPARENT},
    )
    assert response.status_code == 200
    check_trace(exporter, "POST /segment", 1)


def test_without_traceparent_a_new_trace_starts(app_factory: AppFactory) -> None:
    client, engine = app_factory()
    exporter = traced(engine)
    assert (
        client.post("/segment", content=encode(IMAGES[0]), headers={"content-type": "image/png"}).status_code
        == 200
    )
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1 and len(spans) == 5
    assert format(spans[0].context.trace_id, "032x") != TRACE_ID


@pytest.fixture
def grpc_server(tiny_onnx: Path) -> Iterator[ServerThread]:
    server = ServerThread(settings_for(tiny_onnx))
    yield server
    server.stop()


def test_grpc_infer_spans_follow_the_traceparent(grpc_server: ServerThread) -> None:
    exporter = traced(grpc_server.engine)
    request = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[IMAGES.tobytes()])
    request.inputs.add(name="image", datatype="UINT8", shape=list(IMAGES.shape))
    with grpc_server.channel() as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=[("traceparent", TRACEPARENT)])
    check_trace(exporter, "inference.GRPCInferenceService/ModelInfer", 2)


def test_grpc_errors_still_end_their_spans(grpc_server: ServerThread) -> None:
    exporter = traced(grpc_server.engine)
    request = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[b"short"])
    request.inputs.add(name="image", datatype="UINT8", shape=list(IMAGES.shape))
    with grpc_server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=[("traceparent", TRACEPARENT)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"inference.GRPCInferenceService/ModelInfer", "decode"}
    assert not spans["decode"].status.is_ok


def test_on_only_when_asked() -> None:
    settings = Settings(models=[])
    assert not tracing.wanted(settings, {})
    assert tracing.wanted(Settings(models=[], tracing=True), {})
    assert tracing.wanted(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"})
    assert isinstance(tracing.from_settings(settings, {}), tracing.NoTracing)
    on = tracing.from_settings(settings, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9"})
    try:
        assert isinstance(on, tracing.OtelTracing)
        processor = on.provider._active_span_processor._span_processors[0]  # type: ignore[attr-defined]
        assert type(processor).__name__ == "BatchSpanProcessor"
    finally:
        on.shutdown()
    with pytest.raises(RuntimeError, match="not supported"):
        tracing.from_settings(
            settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )


def test_off_imports_nothing_of_opentelemetry(tiny_onnx: Path) -> None:
    """A whole request with tracing off, in a fresh interpreter: the OpenTelemetry SDK and exporters are
    never loaded (FastAPI itself imports the OpenTelemetry API when it is installed; we do not)."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from fastapi.testclient import TestClient
        from server.engine import Engine
        from server.http.app import create_app
        from tests.server.conftest import make_settings
        settings = make_settings([{str(tiny_onnx)!r}])
        engine = Engine(settings)
        asyncio.run(engine.start())
        with TestClient(create_app(settings, engine)) as client:
            body = {{"inputs": [{{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [0] * 192}}]}}
            assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
        asyncio.run(engine.close())
        print(type(engine.observer.tracing).__name__)
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-2:] == ["NoTracing", "[]"]
