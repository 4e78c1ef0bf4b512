"""The REST API key, sent as gRPC metadata; probes (health, reflection, KServe live/ready) stay open."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from protos.gen.inference import grpc_service_pb2 as kserve
from protos.gen.inference import grpc_service_pb2_grpc as kserve_grpc
from server.grpc.auth import presented_keys
from tests.grpc.harness import ServerThread, random_image, settings_for

KEY = "s3cret-key"
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def secured(tiny_onnx: Path) -> Iterator[ServerThread]:
    server = ServerThread(settings_for(tiny_onnx, api_key=KEY))
    yield server
    server.stop()


@pytest.fixture
def channel(secured: ServerThread) -> Iterator[grpc.Channel]:
    with secured.channel() as ch:
        yield ch


def segment_request() -> pb.SegmentRequest:
    image = random_image(0)
    return pb.SegmentRequest(
        raw=pb.RawImage(height=image.shape[0], width=image.shape[1], pixels=image.tobytes())
    )


def infer_request() -> kserve.ModelInferRequest:
    image = random_image(0)
    request = kserve.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="UINT8", shape=[1, *image.shape])
    request.raw_input_contents.append(image.tobytes())
    return request


def calls(channel: grpc.Channel) -> dict[str, Callable[[Metadata], Any]]:
    seg = pb_grpc.SegmentationServiceStub(channel)
    inf = kserve_grpc.GRPCInferenceServiceStub(channel)
    return {
        "Segment": lambda md: seg.Segment(segment_request(), metadata=md, timeout=30),
        "SegmentStream": lambda md: list(
            seg.SegmentStream(iter([segment_request()]), metadata=md, timeout=30)
        ),
        "ListModels": lambda md: seg.ListModels(pb.ListModelsRequest(), metadata=md, timeout=30),
        "ModelInfer": lambda md: inf.ModelInfer(infer_request(), metadata=md, timeout=30),
        "ModelMetadata": lambda md: inf.ModelMetadata(
            kserve.ModelMetadataRequest(name="tiny"), metadata=md, timeout=30
        ),
        "ServerMetadata": lambda md: inf.ServerMetadata(
            kserve.ServerMetadataRequest(), metadata=md, timeout=30
        ),
    }


METHODS = ["Segment", "SegmentStream", "ListModels", "ModelInfer", "ModelMetadata", "ServerMetadata"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-key"),),
        (("x-api-key", "wrong-key"),),
        (("authorization", f"Basic {KEY}"),),
        (("authorization", KEY),),
        (("x-api-key", KEY[:-1]),),
    ],
    ids=["none", "wrong-bearer", "wrong-header", "basic-scheme", "no-scheme", "prefix"],
)
def test_rejected_without_the_right_key(channel: grpc.Channel, method: str, metadata: Metadata) -> None:
    with pytest.raises(grpc.RpcError) as info:
        calls(channel)[method](metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "API key" in info.value.details()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "metadata",
    [(("authorization", f"Bearer {KEY}"),), (("authorization", f"bearer {KEY}"),), (("x-api-key", KEY),)],
    ids=["bearer", "bearer-lowercase", "x-api-key"],
)
def test_accepted_with_the_key(channel: grpc.Channel, method: str, metadata: Metadata) -> None:
    assert calls(channel)[method](metadata) is not None


def test_probes_need_no_key(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    inference = kserve_grpc.GRPCInferenceServiceStub(channel)
    assert inference.ServerLive(kserve.ServerLiveRequest(), timeout=10).live
    assert inference.ServerReady(kserve.ServerReadyRequest(), timeout=10).ready
    assert (
        "danet.segmentation.v1.SegmentationService"
        in ProtoReflectionDescriptorDatabase(channel).get_services()
    )


@pytest.mark.parametrize(
    ("metadata", "keys"),
    [
        ([("authorization", "Bearer abc")], [b"abc"]),
        ([("authorization", "BEARER  abc ")], [b"abc"]),
        ([("x-api-key", "abc"), ("authorization", "Bearer def")], [b"abc", b"def"]),
        ([("authorization", "Token abc")], []),
        ([("authorization", "Bearer")], []),
        (None, []),
    ],
)
def test_presented_keys(metadata: Any, keys: list[bytes]) -> None:
    assert presented_keys(metadata) == keys
