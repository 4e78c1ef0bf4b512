"""inference.GRPCInferenceService in-process (our own stubs; tritonclient is in test_grpc_tritonclient.py)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos.gen.inference import grpc_service_pb2 as pb
from protos.gen.inference import grpc_service_pb2_grpc as pb_grpc
from protos.gen.inference import model_config_pb2 as config_pb
from tests.grpc.harness import OnnxReference

SHAPE = (3, 18, 26, 3)


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(21).integers(0, 256, size=SHAPE, dtype=np.uint8)


def request_for(
    images: np.ndarray, *outputs: str, typed: bool = False, **fields: object
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny", **fields)  # type: ignore[arg-type]
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    if typed:
        tensor.contents.uint_contents.extend(images.ravel().tolist())
    else:
        request.raw_input_contents.append(images.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"UINT8": "<u1", "UINT16": "<u2", "FP32": "<f4", "INT64": "<i8"}
    return {
        out.name: np.frombuffer(raw, dtype=dtypes[out.datatype]).reshape(list(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def test_raw_batch_with_all_outputs(
    stub: pb_grpc.GRPCInferenceServiceStub, batch: np.ndarray, reference: OnnxReference
) -> None:
    response = stub.ModelInfer(request_for(batch, id="r1"), timeout=30)
    assert (response.model_name, response.model_version, response.id) == ("tiny", "1", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("labels", "UINT8", [3, 18, 26]),
        ("confidence", "FP32", [3, 18, 26]),
        ("logits", "FP32", [3, 4, 18, 26]),
    ]
    got, want = decode(response), reference.run(batch)
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["confidence"], want["confidence"], rtol=1e-6)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-6)


def test_outputs_in_requested_order_from_typed_contents(
    stub: pb_grpc.GRPCInferenceServiceStub, batch: np.ndarray, reference: OnnxReference
) -> None:
    images = batch[:1]
    response = stub.ModelInfer(request_for(images, "confidence", "labels", typed=True), timeout=30)
    assert [o.name for o in response.outputs] == ["confidence", "labels"]
    np.testing.assert_array_equal(decode(response)["labels"], reference.run(images)["labels"])


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda r: setattr(r.inputs[0], "name", "pixels"), grpc.StatusCode.INVALID_ARGUMENT, "'image'"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP32"), grpc.StatusCode.INVALID_ARGUMENT, "UINT8"),
        (lambda r: r.inputs[0].shape.__setitem__(3, 4), grpc.StatusCode.INVALID_ARGUMENT, "[N, H, W, 3]"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 19), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
        (lambda r: r.raw_input_contents.append(b"x"), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
        (lambda r: r.outputs.add(name="nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
        (lambda r: setattr(r, "model_name", "missing"), grpc.StatusCode.NOT_FOUND, "missing"),
        (lambda r: setattr(r, "model_name", ""), grpc.StatusCode.INVALID_ARGUMENT, "model name"),
        (lambda r: setattr(r, "model_version", "7"), grpc.StatusCode.NOT_FOUND, "version"),
    ],
    ids=[
        "input-name",
        "datatype",
        "channels",
        "byte-count",
        "extra-raw",
        "output",
        "model",
        "no-model",
        "version",
    ],
)
def test_bad_requests(
    stub: pb_grpc.GRPCInferenceServiceStub,
    batch: np.ndarray,
    mutate: object,
    code: grpc.StatusCode,
    words: str,
) -> None:
    request = request_for(batch[:1])
    mutate(request)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == code
    assert words in info.value.details()


def test_explicit_version_one_is_served(stub: pb_grpc.GRPCInferenceServiceStub, batch: np.ndarray) -> None:
    assert stub.ModelInfer(request_for(batch[:1], "labels", model_version="1"), timeout=30).outputs


def test_metadata_and_config(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert server.name == "danet-serve" and server.version
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"), timeout=10)
    assert (meta.name, list(meta.versions), meta.platform) == ("tiny", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "UINT8", [-1, -1, -1, 3])]
    assert [(t.name, t.datatype) for t in meta.outputs] == [
        ("labels", "UINT8"),
        ("confidence", "FP32"),
        ("logits", "FP32"),
    ]
    config = stub.ModelConfig(pb.ModelConfigRequest(name="tiny"), timeout=10).config
    assert config.name == "tiny" and config.max_batch_size >= 1
    [image] = config.input
    assert (image.data_type, image.format, list(image.dims)) == (
        config_pb.TYPE_UINT8,
        config_pb.ModelInput.FORMAT_NHWC,
        [-1, -1, 3],
    )
    assert [(o.name, o.data_type) for o in config.output][0] == ("labels", config_pb.TYPE_UINT8)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="missing"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny"), timeout=10).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="missing"), timeout=10).ready


def test_stream_infer_keeps_ids_and_reports_errors_in_band(
    stub: pb_grpc.GRPCInferenceServiceStub, batch: np.ndarray, reference: OnnxReference
) -> None:
    bad = request_for(batch[:1], id="bad")
    bad.inputs[0].datatype = "INT8"
    requests = [request_for(batch[i : i + 1], "labels", id=f"f{i}") for i in range(3)]
    requests.insert(1, bad)
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [r.infer_response.id for r in replies] == ["f0", "bad", "f1", "f2"]
    assert [bool(r.error_message) for r in replies] == [False, True, False, False]
    assert "UINT8" in replies[1].error_message
    for reply, i in zip([replies[0], replies[2], replies[3]], range(3), strict=True):
        np.testing.assert_array_equal(
            decode(reply.infer_response)["labels"], reference.run(batch[i : i + 1])["labels"]
        )
