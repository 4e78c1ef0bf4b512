"""SegmentStream: replies in request order with their ids, per-frame errors, concurrency."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from server.segmentation import Segmenter
from tests.grpc.harness import OnnxReference, ServerThread, random_image

RAW_INDEX = pb.SegmentOptions(outputs=[pb.OUTPUT_KIND_INDEX], label_encoding=pb.LABEL_ENCODING_RAW)


def frame(request_id: str, image: np.ndarray) -> pb.SegmentRequest:
    height, width = image.shape[:2]
    return pb.SegmentRequest(
        id=request_id, raw=pb.RawImage(height=height, width=width, pixels=image.tobytes()), options=RAW_INDEX
    )


def labels_of(reply: pb.SegmentResponse) -> np.ndarray:
    return np.frombuffer(reply.labels.data, dtype=np.uint8).reshape(reply.labels.height, reply.labels.width)


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.SegmentationServiceStub:
    return pb_grpc.SegmentationServiceStub(channel)


def test_replies_come_in_request_order_with_ids(
    stub: pb_grpc.SegmentationServiceStub, reference: OnnxReference
) -> None:
    # Different sizes so the frames are not interchangeable.
    images = [random_image(i, height=16 + 2 * i, width=20 + 3 * i) for i in range(12)]
    requests = [frame(f"frame-{i}", image) for i, image in enumerate(images)]
    replies = list(stub.SegmentStream(iter(requests), timeout=60))
    assert [r.id for r in replies] == [f"frame-{i}" for i in range(12)]
    for reply, image in zip(replies, images, strict=True):
        assert not reply.HasField("error")
        np.testing.assert_array_equal(labels_of(reply), reference.labels(image))


@pytest.fixture
def slow_first_frames(grpc_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Earlier frames take longer, so they finish last unless the server restores the order."""
    original = Segmenter.segment
    finished: list[str] = []

    async def segment(self: Segmenter, image: np.ndarray, options: Any, **kwargs: Any) -> Any:
        delay = max(0.0, 0.3 - 0.05 * (image.shape[0] - 16))
        await asyncio.sleep(delay)
        result = await original(self, image, options, **kwargs)
        finished.append(f"h{image.shape[0]}")
        return result

    monkeypatch.setattr(Segmenter, "segment", segment)
    return finished


def test_order_holds_when_later_frames_finish_first(
    stub: pb_grpc.SegmentationServiceStub, slow_first_frames: list[str], reference: OnnxReference
) -> None:
    images = [random_image(i, height=16 + i, width=24) for i in range(6)]
    replies = list(stub.SegmentStream(iter(frame(str(i), im) for i, im in enumerate(images)), timeout=60))
    assert [r.id for r in replies] == [str(i) for i in range(6)]
    # The frames really ran concurrently and out of order (otherwise this test would prove nothing).
    assert slow_first_frames != sorted(slow_first_frames, key=lambda h: int(h[1:]))
    for reply, image in zip(replies, images, strict=True):
        np.testing.assert_array_equal(labels_of(reply), reference.labels(image))


def test_a_bad_frame_gets_an_error_reply_and_the_stream_goes_on(
    stub: pb_grpc.SegmentationServiceStub, reference: OnnxReference
) -> None:
    good = random_image(5)
    encoded = io.BytesIO()
    Image.fromarray(good).save(encoded, format="PNG")
    requests = [
        frame("ok-1", good),
        pb.SegmentRequest(id="broken", encoded=b"definitely not an image"),
        pb.SegmentRequest(
            id="unknown-model", encoded=encoded.getvalue(), options=pb.SegmentOptions(model="nope")
        ),
        pb.SegmentRequest(id="short", raw=pb.RawImage(height=16, width=16, pixels=b"\x00" * 10)),
        frame("ok-2", good),
    ]
    replies = list(stub.SegmentStream(iter(requests), timeout=60))
    assert [r.id for r in replies] == ["ok-1", "broken", "unknown-model", "short", "ok-2"]
    assert [r.error.code for r in replies] == ["", "INVALID_ARGUMENT", "NOT_FOUND", "INVALID_ARGUMENT", ""]
    assert "nope" in replies[2].error.message
    np.testing.assert_array_equal(labels_of(replies[4]), reference.labels(good))


def test_streaming_from_a_generator_that_waits(stub: pb_grpc.SegmentationServiceStub) -> None:
    """A camera-like client: sends a frame, reads its reply, then sends the next one."""
    import queue

    outbox: queue.Queue[pb.SegmentRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.SegmentRequest]:
        while (item := outbox.get()) is not None:
            yield item

    call = stub.SegmentStream(requests(), timeout=60)
    replies = []
    for i in range(3):
        outbox.put(frame(f"live-{i}", random_image(20 + i)))
        replies.append(next(call))
    outbox.put(None)
    assert list(call) == []
    assert [r.id for r in replies] == ["live-0", "live-1", "live-2"]
