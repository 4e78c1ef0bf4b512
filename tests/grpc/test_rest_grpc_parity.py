"""REST ``/segment`` and gRPC ``Segment`` share one pipeline and one renderer: for the same image and
options they answer identical bytes in every format (colour, index and overlay PNGs, statistics)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from fastapi.testclient import TestClient

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from server.http.app import create_app
from tests.conftest import encode, make_scene
from tests.grpc.harness import ServerThread

IMAGE = make_scene(40, 56, seed=3)
CASES = [
    ({}, {}),
    ({"mode": "slide", "flip": "true"}, {"mode": pb.MODE_SLIDE, "flip": True}),
    ({"scales": "0.75,1.25", "max_size": "48"}, {"scales": [0.75, 1.25], "max_size": 48}),
    ({"tta": "official", "crop_size": "32"}, {"tta": pb.TEST_TIME_AUGMENTATION_OFFICIAL, "crop_size": [32]}),
]


@pytest.fixture(scope="module")
def rest(grpc_server: ServerThread) -> Iterator[TestClient]:
    """A REST app over the gRPC server's own engine."""
    with TestClient(create_app(grpc_server.engine.settings, grpc_server.engine)) as client:
        yield client


@pytest.mark.parametrize(("query", "options"), CASES)
def test_rest_and_grpc_render_identical_bytes(
    rest: TestClient, channel: grpc.Channel, query: dict[str, str], options: dict[str, object]
) -> None:
    stub = pb_grpc.SegmentationServiceStub(channel)
    outputs = [pb.OUTPUT_KIND_INDEX, pb.OUTPUT_KIND_COLOR, pb.OUTPUT_KIND_OVERLAY, pb.OUTPUT_KIND_STATS]
    reply = stub.Segment(
        pb.SegmentRequest(
            encoded=encode(IMAGE), options=pb.SegmentOptions(outputs=outputs, alpha=0.3, **options)
        ),
        timeout=60,
    )
    assert not reply.HasField("error")

    def post(fmt: str) -> bytes:
        response = rest.post(
            "/segment",
            params={**query, "format": fmt, "alpha": "0.3"},
            files={"image": ("scene.png", encode(IMAGE), "image/png")},
        )
        assert response.status_code == 200, response.text
        return response.content

    assert post("index") == reply.labels.data
    assert post("color") == reply.color_png
    assert post("overlay") == reply.overlay_png
    stats = rest.post(
        "/segment",
        params={**query, "format": "json"},
        files={"image": ("scene.png", encode(IMAGE), "image/png")},
    ).json()["classes"]
    assert [(s["id"], s["name"], s["pixels"]) for s in stats] == [
        (s.id, s.name, s.pixels) for s in reply.stats
    ]
    for rest_stat, grpc_stat in zip(stats, reply.stats, strict=True):
        assert rest_stat["mean_confidence"] == pytest.approx(grpc_stat.mean_confidence, abs=1e-6)
