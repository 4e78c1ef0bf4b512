"""The image part of the fault corpus through gRPC ``Segment``: OK with the right size, or INVALID_ARGUMENT.

HTTP-only cases (multipart envelopes, query options, body caps) do not apply; every file-content case
does, sent as ``SegmentRequest.encoded``. INTERNAL / UNKNOWN would mean an unhandled server error.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from bench.clients import grpc_channel_options, segmentation_stubs
from bench.server_proc import ServerProcess
from tests.faults.conftest import MAX_UPLOAD_BYTES
from tests.faults.corpus import Expect, FaultCase, build_corpus
from tests.onnx_fixtures import RGB_CLASSES

pb2, pb2_grpc = segmentation_stubs()

CASES = [
    c
    for c in build_corpus(max_upload_bytes=MAX_UPLOAD_BYTES)
    if c.send in ("multipart", "raw")
    and c.field_name == "image"
    and not c.params
    and not c.name.startswith("oversize")
]


@pytest.fixture(scope="module")
def stub(fault_server: ServerProcess) -> Iterator[object]:
    with grpc.insecure_channel(fault_server.grpc_target, options=grpc_channel_options()) as channel:
        yield pb2_grpc.SegmentationServiceStub(channel)


def test_enough_cases_apply() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: FaultCase, stub: object, fault_server: ServerProcess) -> None:
    request = pb2.SegmentRequest(
        encoded=case.data,
        options=pb2.SegmentOptions(outputs=[pb2.OUTPUT_KIND_INDEX], label_encoding=pb2.LABEL_ENCODING_RAW),
    )
    try:
        reply = stub.Segment(request, timeout=60)  # type: ignore[attr-defined]
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        assert case.expect is not Expect.OK, f"{case.name}: {code} {exc.details()}"  # type: ignore[attr-defined]
        assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{case.name}: {code} {exc.details()}"  # type: ignore[attr-defined]
        assert exc.details() and "Traceback" not in exc.details()  # type: ignore[attr-defined]
    else:
        assert case.expect is not Expect.REJECT, f"{case.name}: accepted a file that must be refused"
        assert case.expect_size is not None
        width, height = case.expect_size
        assert (reply.width, reply.height) == (width, height)
        labels = np.frombuffer(reply.labels.data, dtype=reply.labels.dtype or "uint8")
        assert labels.size == width * height
        assert int(labels.max()) < len(RGB_CLASSES)
    assert fault_server.process is not None and fault_server.process.poll() is None, "the server died"
