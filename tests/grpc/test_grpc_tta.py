"""``tta`` and its sizes on danet.segmentation.v1, and refusal of option fields this server lacks."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from tests.grpc.harness import random_image


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.SegmentationServiceStub:
    return pb_grpc.SegmentationServiceStub(channel)


def request_for(image: np.ndarray, options: pb.SegmentOptions | bytes) -> pb.SegmentRequest:
    height, width = image.shape[:2]
    request = pb.SegmentRequest(raw=pb.RawImage(height=height, width=width, pixels=image.tobytes()))
    if isinstance(options, bytes):
        request.options.MergeFromString(options)
    else:
        request.options.CopyFrom(options)
    return request


def options(**fields: Any) -> pb.SegmentOptions:
    return pb.SegmentOptions(outputs=[pb.OUTPUT_KIND_INDEX], label_encoding=pb.LABEL_ENCODING_RAW, **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"tta": pb.TEST_TIME_AUGMENTATION_OFFICIAL, "base_size": [48], "crop_size": [24]},
        {"tta": pb.TEST_TIME_AUGMENTATION_MMSEG, "crop_size": [16, 24], "stride": [8, 12], "flip": True},
        {"tta": pb.TEST_TIME_AUGMENTATION_MMSEG, "base_size": [80, 60]},
    ],
)
def test_presets_answer_maps_of_the_input_size(stub: pb_grpc.SegmentationServiceStub, fields: Any) -> None:
    image = random_image(3, 30, 44)
    reply = stub.Segment(request_for(image, options(**fields)), timeout=60)
    assert (reply.height, reply.width) == (30, 44)
    assert len(reply.labels.data) == 30 * 44


@pytest.mark.parametrize(
    "payload, words",
    [
        (options(tta=7), "unknown tta 7"),
        (options(tta=pb.TEST_TIME_AUGMENTATION_OFFICIAL, crop_size=[8, 8, 8]), "one or two values"),
        (options(tta=pb.TEST_TIME_AUGMENTATION_OFFICIAL, base_size=[96, 48]), "one number for base_size"),
        (options(crop_size=[32]), "only apply with tta"),
        # field 99 (varint 1): what an option from a newer client looks like to this server
        (options().SerializeToString() + b"\x98\x06\x01", "unknown field number(s) [99] in SegmentOptions"),
    ],
    ids=["bad-enum", "three-values", "official-pair", "no-tta", "unknown-field"],
)
def test_bad_options_are_invalid_argument(
    stub: pb_grpc.SegmentationServiceStub, payload: pb.SegmentOptions | bytes, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(request_for(random_image(0), payload), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details()
    if isinstance(payload, bytes):
        assert "tta = 10" in info.value.details()  # names what this server does know
