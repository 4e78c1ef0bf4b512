"""grpc.health.v1 follows the engine (NOT_SERVING -> SERVING -> NOT_SERVING), UNAVAILABLE while not
ready, and server reflection lists every service."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from protos.gen.inference import grpc_service_pb2 as kserve
from protos.gen.inference import grpc_service_pb2_grpc as kserve_grpc
from server.grpc.server import stop_grpc_server
from tests.grpc.harness import ServerThread, random_image, settings_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SEGMENTATION = "danet.segmentation.v1.SegmentationService"
INFERENCE = "inference.GRPCInferenceService"


def status(channel: grpc.Channel, service: str = "") -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10
    )
    return int(reply.status)


def wait_for(channel: grpc.Channel, expected: int) -> None:
    deadline = time.monotonic() + 10
    while status(channel) != expected:
        assert time.monotonic() < deadline, "health status did not change"
        time.sleep(0.02)


def segment(channel: grpc.Channel) -> pb.SegmentResponse:
    image = random_image(0)
    raw = pb.RawImage(height=image.shape[0], width=image.shape[1], pixels=image.tobytes())
    return pb_grpc.SegmentationServiceStub(channel).Segment(pb.SegmentRequest(raw=raw), timeout=30)


def infer_request() -> kserve.ModelInferRequest:
    image = random_image(0)
    request = kserve.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="UINT8", shape=[1, *image.shape])
    request.raw_input_contents.append(image.tobytes())
    return request


def test_lifecycle_not_ready_serving_then_shutdown(tiny_onnx: Path) -> None:
    server = ServerThread(settings_for(tiny_onnx), start_engine=False)
    try:
        with server.channel() as channel:
            # Not ready: health says so and inference answers UNAVAILABLE.
            assert status(channel) == NOT_SERVING
            assert status(channel, SEGMENTATION) == NOT_SERVING
            assert status(channel, INFERENCE) == NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                segment(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            inference = kserve_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                inference.ModelInfer(infer_request(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.SegmentationServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                list(
                    pb_grpc.SegmentationServiceStub(channel).SegmentStream(
                        iter([pb.SegmentRequest()]), timeout=10
                    )
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert inference.ServerLive(kserve.ServerLiveRequest(), timeout=10).live is True
            assert inference.ServerReady(kserve.ServerReadyRequest(), timeout=10).ready is False
            assert inference.ModelReady(kserve.ModelReadyRequest(name="tiny"), timeout=10).ready is False

            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == NOT_SERVING

            server.call(server.engine.start)
            assert next(watch).status == SERVING
            assert status(channel, SEGMENTATION) == SERVING
            assert segment(channel).labels.data
            assert inference.ServerReady(kserve.ServerReadyRequest(), timeout=10).ready is True

            # Graceful shutdown: watchers hear NOT_SERVING before the server goes away.
            # Graceful shutdown: watchers hear NOT_SERVING, then their stream ends (it does not hold the
            # grace period open), and the server stops well before the 30 s grace.
            started = time.monotonic()
            stopping = server.submit(lambda: stop_grpc_server(server.server, 30.0))
            assert next(watch).status == NOT_SERVING
            assert list(watch) == []
            stopping.result(30)
            assert time.monotonic() - started < 25
    finally:
        server.stop()


def test_engine_closing_turns_health_not_serving(tiny_onnx: Path) -> None:
    server = ServerThread(settings_for(tiny_onnx))
    try:
        with server.channel() as channel:
            wait_for(channel, SERVING)
            server.call(server.engine.close)
            wait_for(channel, NOT_SERVING)
            with pytest.raises(grpc.RpcError) as info:
                segment(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_unknown_service_is_not_found_and_list_covers_ours(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = health.List(health_pb2.HealthListRequest(), timeout=10).statuses
    assert {name: reply.status for name, reply in listed.items()} == {
        "": SERVING,
        SEGMENTATION: SERVING,
        INFERENCE: SERVING,
    }


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) >= {
        SEGMENTATION,
        INFERENCE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    # The descriptors served are complete enough for generic clients (grpcurl) to build requests.
    pool = descriptor_pool.DescriptorPool(database)
    methods = {m.name for m in pool.FindServiceByName(SEGMENTATION).methods}
    assert methods == {"Segment", "SegmentStream", "ListModels"}
    infer = pool.FindMessageTypeByName("inference.ModelInferRequest")
    assert infer.fields_by_name["raw_input_contents"].number == 7
