"""Every status code the servicers promise, produced by real requests against a real engine."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from server.instance import ModelInstance
from server.segmentation import Segmenter
from tests.grpc.harness import ServerThread, random_image, settings_for


def raw_request(image: np.ndarray, **options: Any) -> pb.SegmentRequest:
    height, width = image.shape[:2]
    return pb.SegmentRequest(
        raw=pb.RawImage(height=height, width=width, pixels=image.tobytes()),
        options=pb.SegmentOptions(**options),
    )


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.SegmentationServiceStub:
    return pb_grpc.SegmentationServiceStub(channel)


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (pb.SegmentRequest(encoded=b"GIF89a-but-not-really"), "image"),
        (pb.SegmentRequest(), "no image"),
        (pb.SegmentRequest(raw=pb.RawImage(height=16, width=16, pixels=b"\x00" * 700)), "768 bytes"),
        (raw_request(random_image(0), alpha=1.5), "alpha"),
        (raw_request(random_image(0), scales=[9.0]), "scale"),
        (raw_request(random_image(0), outputs=[99]), "output kind"),
        (raw_request(random_image(0), max_size=4), "max_size"),
    ],
    ids=["undecodable", "missing", "short-raw", "alpha", "scales", "output-kind", "max-size"],
)
def test_invalid_argument(
    stub: pb_grpc.SegmentationServiceStub, request_: pb.SegmentRequest, words: str
) -> None:
    code, details = code_of(lambda: stub.Segment(request_, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details


def test_too_many_pixels_is_invalid_argument(tiny_onnx: Path) -> None:
    server = ServerThread(settings_for(tiny_onnx, max_pixels=1000))
    try:
        with server.channel() as channel:
            stub = pb_grpc.SegmentationServiceStub(channel)
            code, details = code_of(lambda: stub.Segment(raw_request(random_image(0, 40, 40)), timeout=30))
    finally:
        server.stop()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000" in details


def test_not_found(stub: pb_grpc.SegmentationServiceStub) -> None:
    code, details = code_of(
        lambda: stub.Segment(raw_request(random_image(0), model="no-such-model"), timeout=30)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in details


def test_internal_hides_details_and_logs_the_traceback(
    grpc_server: ServerThread,
    stub: pb_grpc.SegmentationServiceStub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(Segmenter, "segment", broken)
    with caplog.at_level(logging.ERROR, logger="server.grpc"):
        code, details = code_of(lambda: stub.Segment(raw_request(random_image(0)), timeout=30))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details
    [record] = [r for r in caplog.records if r.exc_info]
    assert "secret-internal-detail" in str(record.exc_info[1])


class BlockedWorker:
    """Holds the engine's single worker inside every run until ``release`` is set, counting runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.runs = 0
        original = ModelInstance.run

        def run(instance: ModelInstance, *args: Any) -> Any:
            self.runs += 1
            self.entered.set()
            self.release.wait(60)
            return original(instance, *args)

        monkeypatch.setattr(ModelInstance, "run", run)


@pytest.fixture
def blocked(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ServerThread, BlockedWorker]]:
    server = ServerThread(
        settings_for(tiny_onnx, workers=1, batching="off", max_queue=1, request_timeout_s=0.5)
    )
    worker = BlockedWorker(monkeypatch)
    try:
        yield server, worker
    finally:
        worker.release.set()
        server.stop()


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_queue_full_deadlines_and_cancellation(
    blocked: tuple[ServerThread, BlockedWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every outcome here is decided by the blocked worker, not by how fast the machine is: the worker
    stays inside A's run until ``release``, so B stays in the queue (a timed-out request keeps its slot
    until a worker pops it) and C always meets a full queue, however late each request arrives."""
    server, worker = blocked
    with server.channel() as channel:
        stub = pb_grpc.SegmentationServiceStub(channel)
        image = random_image(1)
        # A: no client deadline; it occupies the only worker and hits the server's request timeout.
        a = stub.Segment.future(raw_request(image))
        wait_until(worker.entered.is_set)
        # B: no client deadline either; it waits in the queue (max_queue=1) until the server's timeout.
        b = stub.Segment.future(raw_request(image))
        wait_until(lambda: server.engine.queue_depth() == 1)
        # C: the queue is full.
        code, details = code_of(lambda: stub.Segment(raw_request(image), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue" in details.lower() or "overload" in details.lower()
        for call in (a, b):
            with pytest.raises(grpc.RpcError) as error:
                call.result()
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "longer than" in error.value.details()  # the server's timeout, not the client's

        # Later requests get room (the settings object is read at each request).
        monkeypatch.setattr(server.engine.settings, "request_timeout_s", 60.0)
        worker.release.set()
        wait_until(lambda: server.engine.queue_depth() == 0)  # B's slot is free once a worker popped it
        reply = stub.Segment(raw_request(image), timeout=30)
        assert reply.labels.data
        # A ran (it was already running) and D ran; B was dropped when a worker popped it: it had timed out.
        assert worker.runs == 2

        # E: the worker is held again; the client's own deadline ends E, whenever it expires.
        worker.release.clear()
        code, _ = code_of(lambda: stub.Segment(raw_request(image), timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        worker.release.set()
        wait_until(lambda: server.engine.queue_depth() == 0)
        assert stub.Segment(raw_request(image), timeout=30).labels.data
