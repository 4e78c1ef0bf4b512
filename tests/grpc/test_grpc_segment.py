"""danet.segmentation.v1.SegmentationService: unary Segment, raw pixels, outputs, ListModels."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from tests.grpc.harness import MODEL_NAME, OnnxReference, random_image, solid
from tests.onnx_fixtures import RGB_CLASSES, RGB_PALETTE


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image, "RGB").save(out, format="PNG")
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture)


def decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.SegmentationServiceStub:
    return pb_grpc.SegmentationServiceStub(channel)


def test_encoded_image_returns_label_png_and_stats(
    stub: pb_grpc.SegmentationServiceStub, reference: OnnxReference
) -> None:
    image = random_image(1)
    reply = stub.Segment(pb.SegmentRequest(id="a", encoded=png_bytes(image)), timeout=30)
    assert reply.id == "a"
    assert reply.model == MODEL_NAME
    assert reply.provider == "CPUExecutionProvider"
    assert (reply.height, reply.width) == image.shape[:2]
    assert reply.labels.encoding == pb.LABEL_ENCODING_PNG
    labels = decode_png(reply.labels.data)
    np.testing.assert_array_equal(labels, reference.labels(image))
    counts = np.bincount(labels.ravel(), minlength=len(RGB_CLASSES))
    assert {(s.id, s.name, s.pixels) for s in reply.stats} == {
        (i, RGB_CLASSES[i], int(c)) for i, c in enumerate(counts) if c
    }
    assert sum(s.fraction for s in reply.stats) == pytest.approx(1.0)
    assert {"decode_ms", "inference_ms", "encode_ms"} <= set(reply.timings_ms)
    assert not reply.color_png and not reply.overlay_png  # not requested


def test_raw_pixels_with_raw_label_encoding(
    stub: pb_grpc.SegmentationServiceStub, reference: OnnxReference
) -> None:
    image = random_image(2, height=17, width=33)
    request = pb.SegmentRequest(
        id="raw",
        raw=pb.RawImage(height=17, width=33, pixels=image.tobytes()),
        options=pb.SegmentOptions(
            model=MODEL_NAME,
            outputs=[pb.OUTPUT_KIND_INDEX, pb.OUTPUT_KIND_CONFIDENCE],
            label_encoding=pb.LABEL_ENCODING_RAW,
        ),
    )
    reply = stub.Segment(request, timeout=30)
    assert reply.labels.encoding == pb.LABEL_ENCODING_RAW
    assert (reply.labels.height, reply.labels.width, reply.labels.dtype) == (17, 33, "uint8")
    labels = np.frombuffer(reply.labels.data, dtype="<u1").reshape(17, 33)
    np.testing.assert_array_equal(labels, reference.labels(image))
    confidence = np.frombuffer(reply.confidence, dtype="<f4").reshape(17, 33)
    np.testing.assert_allclose(confidence, reference.run(image[None])["confidence"][0], rtol=1e-6)
    assert not reply.stats  # only what was asked for


def test_color_and_overlay_use_the_model_palette(stub: pb_grpc.SegmentationServiceStub) -> None:
    red = solid((250, 10, 10))
    request = pb.SegmentRequest(
        raw=pb.RawImage(height=red.shape[0], width=red.shape[1], pixels=red.tobytes()),
        options=pb.SegmentOptions(outputs=[pb.OUTPUT_KIND_COLOR, pb.OUTPUT_KIND_OVERLAY], alpha=1.0),
    )
    reply = stub.Segment(request, timeout=30)
    colour = decode_rgb(reply.color_png)
    assert colour.shape == (*red.shape[:2], 3)
    assert np.all(colour == np.asarray(RGB_PALETTE[1], dtype=np.uint8))
    # alpha = 1: the overlay is the colour map itself
    np.testing.assert_array_equal(decode_rgb(reply.overlay_png), colour)
    half = stub.Segment(
        pb.SegmentRequest(
            raw=request.raw, options=pb.SegmentOptions(outputs=[pb.OUTPUT_KIND_OVERLAY], alpha=0.0)
        ),
        timeout=30,
    )
    np.testing.assert_array_equal(decode_rgb(half.overlay_png), red)


def test_slide_flip_and_scales_reach_the_engine(
    stub: pb_grpc.SegmentationServiceStub, reference: OnnxReference
) -> None:
    # The tiny model is per-pixel, so test-time augmentation must not change the labels.
    image = random_image(3, height=40, width=48)
    options = pb.SegmentOptions(
        mode=pb.MODE_SLIDE, flip=True, scales=[1.0, 1.0], max_size=48, label_encoding=pb.LABEL_ENCODING_RAW
    )
    reply = stub.Segment(pb.SegmentRequest(encoded=png_bytes(image), options=options), timeout=30)
    labels = np.frombuffer(reply.labels.data, dtype=np.uint8).reshape(40, 48)
    np.testing.assert_array_equal(labels, reference.labels(image))


def test_list_models(stub: pb_grpc.SegmentationServiceStub) -> None:
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    assert reply.default_model == MODEL_NAME
    [model] = reply.models
    assert model.name == MODEL_NAME
    assert list(model.classes) == RGB_CLASSES
    assert [(c.r, c.g, c.b) for c in model.palette] == RGB_PALETTE
    assert [(t.name, t.dtype, list(t.shape)) for t in model.inputs] == [("image", "uint8", [-1, -1, -1, 3])]
    assert {t.name for t in model.outputs} == {"labels", "confidence", "logits"}
    assert model.metadata["classes"].startswith("[")


def test_messages_above_grpc_default_4mib_are_accepted(stub: pb_grpc.SegmentationServiceStub) -> None:
    height, width = 1100, 1400  # 4.6 MB of raw pixels
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2, 1] = 200  # left half green
    request = pb.SegmentRequest(
        raw=pb.RawImage(height=height, width=width, pixels=image.tobytes()),
        options=pb.SegmentOptions(outputs=[pb.OUTPUT_KIND_STATS]),
    )
    assert request.ByteSize() > 4 * 1024 * 1024
    reply = stub.Segment(request, timeout=60)
    by_name = {s.name: s.pixels for s in reply.stats}
    assert by_name["green"] == height * (width // 2)


def test_messages_above_the_configured_limit_are_refused(stub: pb_grpc.SegmentationServiceStub) -> None:
    request = pb.SegmentRequest(raw=pb.RawImage(height=1, width=3_000_000, pixels=bytes(9_000_000)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
