"""KServe v2 REST against a careless or hostile client, on a real server process: every malformed tensor is
a clean 4xx (never a 500), integer inputs are never truncated, and a reply too large is refused before it is
built, naming the binary extension and ``outputs``. The server stays ready throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from bench.server_proc import ServerProcess
from bench.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model = build_tiny_model(tmp_path_factory.mktemp("hostile") / "tiny.onnx", logits=True, name="tiny")
    env = {
        "DANET_MAX_JSON_REPLY_BYTES": str(4 << 20),
        "DANET_WARMUP_SIZES": "32x32",
        "DANET_ACCESS_LOG": "false",
    }
    with ServerProcess([model], env=env, grpc=False) as proc:
        yield proc


def infer(server: ServerProcess, body: bytes | str) -> httpx.Response:
    return httpx.post(f"{server.http_url}/v2/models/tiny/infer", content=body, timeout=60)


def tensor(shape: object, data: object) -> str:
    return json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": shape, "data": data}]})


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (tensor([1, 2**63 - 1, 2**63 - 1, 3], [0]), 413, "max_inference_size"),
        (tensor([2**40, 8, 8, 3], [0]), 413, "images"),
        (tensor([1, True, 8, 3], [0] * 24), 400, "of integers"),
        (tensor([1, 8, 8, 3], [2**70] * 192), 400, "integers 0-255"),
        (tensor([1, 8, 8, 3], [0.9] * 192), 400, "floating-point"),
        (tensor([1, 8, 8, 3], [True] * 192), 400, "boolean"),
        (tensor([1, 8, 8, 3], [256] * 192), 400, "within 0-255"),
        (tensor([1, 8, 8, 3], [[0, 1], [2]]), 400, "image"),
        ('{"inputs": ' + "[" * 3000 + "]" * 3000 + "}", 400, "nested too deeply"),
        (
            '{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1,8,8,3], "data": '
            + "[" * 200
            + "0"
            + "]" * 200
            + "}]}",
            400,
            "image",
        ),
        (tensor([1, 8, 8, 3], [0] * 192)[:-1] + ', "outputs": [{"name": 7}]}', 400, "outputs"),
        (tensor([1, 8, 8, 3], [0] * 192)[:-1] + ', "parameters": []}', 400, "parameters"),
    ],
)
def test_malformed_tensors_are_4xx(server: ServerProcess, body: str, status: int, fragment: str) -> None:
    response = infer(server, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert httpx.get(f"{server.http_url}/readyz", timeout=5).status_code == 200


def test_an_oversized_json_reply_is_refused_before_inference(server: ServerProcess) -> None:
    """All outputs as JSON lists for 512x512 would be ~25 MiB of text: over the 4 MiB limit set here."""
    response = infer(server, tensor([1, 512, 512, 3], [0] * (512 * 512 * 3)))
    assert response.status_code == 413, response.text
    message = response.json()["error"]
    assert "binary_data" in message and "`outputs`" in message and "max_json_reply_bytes" in message
    # the same request asking for binary labels only is served
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, 512, 512, 3],
                    "parameters": {"binary_data_size": 512 * 512 * 3},
                }
            ],
            "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = httpx.post(
        f"{server.http_url}/v2/models/tiny/infer",
        content=header + bytes(512 * 512 * 3),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.content) - int(response.headers["inference-header-content-length"]) == 512 * 512
