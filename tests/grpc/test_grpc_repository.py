"""Versions and the repository extension over gRPC (both services), in process against a real engine.

tritonclient's view of the same calls runs in a separate process: tests/server/test_swap.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as seg_pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as seg_grpc
from protos.gen.inference import grpc_service_pb2 as pb
from protos.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.grpc.harness import ServerThread, random_image, settings_for
from tests.onnx_fixtures import write_model

KEY = "repo-key"
AUTH = (("authorization", f"Bearer {KEY}"),)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = tmp_path_factory.mktemp("repo")
    for version in (1, 2):
        write_model(repo / "tiny" / str(version) / "model.onnx", classes=["a", "b", "c", f"v{version}"])
    write_model(repo / "spare" / "1" / "model.onnx")
    settings = settings_for(
        repo / "tiny" / "1" / "model.onnx",
        models=[],
        model_repository=repo,
        model_control_mode="explicit",
        load_models=["tiny"],
        version_policy="all",
        api_key=KEY,
    )
    thread = ServerThread(settings)
    yield thread
    thread.stop()


@pytest.fixture
def kserve(server: ServerThread) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with server.channel() as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer_request(version: str = "") -> pb.ModelInferRequest:
    image = random_image(4, 8, 8)
    request = pb.ModelInferRequest(
        model_name="tiny", model_version=version, raw_input_contents=[image.tobytes()]
    )
    request.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 3])
    return request


def test_kserve_versions(kserve: pb_grpc.GRPCInferenceServiceStub) -> None:
    metadata = kserve.ModelMetadata(pb.ModelMetadataRequest(name="tiny"), metadata=AUTH, timeout=10)
    assert list(metadata.versions) == ["1", "2"]
    assert kserve.ModelInfer(infer_request(), metadata=AUTH, timeout=10).model_version == "2"
    assert kserve.ModelInfer(infer_request("1"), metadata=AUTH, timeout=10).model_version == "1"
    with pytest.raises(grpc.RpcError) as info:
        kserve.ModelInfer(infer_request("3"), metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "version '3'" in (info.value.details() or "")
    ready = kserve.ModelReady(pb.ModelReadyRequest(name="tiny", version="1"), metadata=AUTH, timeout=10)
    assert ready.ready
    assert not kserve.ModelReady(
        pb.ModelReadyRequest(name="tiny", version="3"), metadata=AUTH, timeout=10
    ).ready


def test_own_service_versions(server: ServerThread) -> None:
    image = random_image(5, 12, 12)
    with server.channel() as channel:
        stub = seg_grpc.SegmentationServiceStub(channel)
        listed = stub.ListModels(seg_pb.ListModelsRequest(), metadata=AUTH, timeout=10)
        [tiny] = listed.models
        assert (tiny.version, list(tiny.versions), tiny.classes[-1]) == ("2", ["1", "2"], "v2")
        for version, expected in (("1", "1"), ("", "2")):
            request = seg_pb.SegmentRequest(
                raw=seg_pb.RawImage(height=12, width=12, pixels=image.tobytes()),
                options=seg_pb.SegmentOptions(version=version, outputs=[seg_pb.OUTPUT_KIND_STATS]),
            )
            reply = stub.Segment(request, metadata=AUTH, timeout=10)
            assert reply.model_version == expected
            assert {s.name for s in reply.stats} <= {"a", "b", "c", f"v{expected}"}


def test_repository_extension(kserve: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = kserve.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=AUTH, timeout=10)
    rows = [(m.name, m.version, m.state) for m in index.models]
    assert rows == [("spare", "", ""), ("tiny", "1", "READY"), ("tiny", "2", "READY")]
    kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="spare"), metadata=AUTH, timeout=30)
    assert kserve.ModelReady(pb.ModelReadyRequest(name="spare"), metadata=AUTH, timeout=10).ready
    kserve.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(model_name="spare"), metadata=AUTH, timeout=30
    )
    ready = kserve.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=AUTH, timeout=10)
    assert [(m.name, m.version) for m in ready.models] == [("tiny", "1"), ("tiny", "2")]
    with pytest.raises(grpc.RpcError) as info:
        kserve.ModelMetadata(pb.ModelMetadataRequest(name="spare"), metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    for call, code in (
        (
            lambda: kserve.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="nope"), metadata=AUTH
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(), metadata=AUTH),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (lambda: kserve.RepositoryIndex(pb.RepositoryIndexRequest()), grpc.StatusCode.UNAUTHENTICATED),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code
