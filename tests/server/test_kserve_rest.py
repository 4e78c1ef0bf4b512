"""KServe v2 REST endpoints over the in-process app (raw protocol; tritonclient runs in test_live_server)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_scene
from tests.onnx_fixtures import reference_logits

BATCH = np.stack([make_scene(24, 40, seed=1), make_scene(24, 40, seed=2)])
LOGITS = reference_logits(BATCH)


def binary_request(
    outputs: list[dict[str, object]] | None = None, **parameters: object
) -> tuple[bytes, dict[str, str]]:
    header: dict[str, object] = {
        "id": "req-1",
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(BATCH.shape),
                "parameters": {"binary_data_size": BATCH.nbytes},
            }
        ],
    }
    if outputs is not None:
        header["outputs"] = outputs
    if parameters:
        header["parameters"] = parameters
    blob = json.dumps(header).encode()
    return blob + BATCH.tobytes(), {"Inference-Header-Content-Length": str(len(blob))}


def split_binary(response) -> tuple[dict, dict[str, np.ndarray]]:
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    offset = length
    tensors = {}
    dtypes = {"UINT8": np.uint8, "FP32": np.float32}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        raw = response.content[offset : offset + size]
        tensors[output["name"]] = np.frombuffer(raw, dtype=dtypes[output["datatype"]]).reshape(
            output["shape"]
        )
        offset += size
    assert offset == len(response.content)
    return header, tensors


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "danet-serve" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_ready_and_config(client: TestClient) -> None:
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
        assert {(o["name"], o["datatype"]) for o in meta["outputs"]} == {
            ("labels", "UINT8"),
            ("confidence", "FP32"),
            ("logits", "FP32"),
        }
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    config = client.get("/v2/models/tiny/config").json()
    assert config["input"][0] == {
        "name": "image",
        "data_type": "TYPE_UINT8",
        "format": "FORMAT_NHWC",
        "dims": [-1, -1, 3],
    }


def test_errors_use_protocol_shape(client: TestClient) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/tiny/versions/7"):
        response = client.get(path)
        assert response.status_code == 404
        assert isinstance(response.json()["error"], str) and response.json()["error"]
    response = client.post("/v2/models/nope/infer", content=b"{}")
    assert response.status_code == 404 and "nope" in response.json()["error"]


def test_binary_infer_all_outputs(client: TestClient) -> None:
    body, headers = binary_request(binary_data_output=True)
    response = client.post("/v2/models/tiny/infer", content=body, headers=headers)  # no Content-Type
    assert response.status_code == 200, response.text
    header, tensors = split_binary(response)
    assert header["model_name"] == "tiny" and header["id"] == "req-1"
    np.testing.assert_array_equal(tensors["labels"], LOGITS.argmax(1))
    np.testing.assert_allclose(tensors["logits"], LOGITS, rtol=1e-5, atol=1e-5)
    assert tensors["confidence"].shape == (2, 24, 40)
    assert response.headers["x-danet-provider"] == "CPUExecutionProvider"


def test_mixed_json_and_binary_outputs(client: TestClient) -> None:
    body, headers = binary_request(
        [{"name": "labels", "parameters": {"binary_data": True}}, {"name": "confidence"}]
    )
    response = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    labels_out, confidence_out = header["outputs"]
    assert labels_out["parameters"]["binary_data_size"] == 2 * 24 * 40
    labels = np.frombuffer(response.content[length:], dtype=np.uint8).reshape(labels_out["shape"])
    np.testing.assert_array_equal(labels, LOGITS.argmax(1))
    assert confidence_out["shape"] == [2, 24, 40] and len(confidence_out["data"]) == 2 * 24 * 40


def test_json_infer(client: TestClient) -> None:
    image = BATCH[:1]
    request = {
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": list(image.shape), "data": image.ravel().tolist()}
        ],
        "outputs": [{"name": "labels"}],
    }
    response = client.post("/v2/models/tiny/versions/1/infer", json=request)
    assert response.status_code == 200
    body = response.json()
    assert body["outputs"][0]["datatype"] == "UINT8"
    labels = np.asarray(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
    np.testing.assert_array_equal(labels, LOGITS[:1].argmax(1))
    # nested data lists are accepted too
    request["inputs"][0]["data"] = image.tolist()  # type: ignore[index]
    assert client.post("/v2/models/tiny/infer", json=request).status_code == 200


def test_gzip_request_body(client: TestClient) -> None:
    body, headers = binary_request([{"name": "labels", "parameters": {"binary_data": True}}])
    response = client.post(
        "/v2/models/tiny/infer", content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "request_body, fragment",
    [
        ({"inputs": []}, "exactly one input"),
        (
            {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [0] * 192}]},
            "unknown input",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 8, 8, 3], "data": [0] * 192}]},
            "UINT8",
        ),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8], "data": [0] * 64}]}, "shape"),
        (
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [0] * 5}]},
            "needs 192",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [300] * 192}]},
            "0-255",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 4], "data": [0] * 256}]},
            "3 channels",
        ),
        (
            {
                "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [0] * 192}],
                "outputs": [{"name": "masks"}],
            },
            "unknown output",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 4, 4, 3], "data": [0] * 48}]},
            "8x8",
        ),
    ],
)
def test_bad_infer_requests_are_400(client: TestClient, request_body: dict, fragment: str) -> None:
    response = client.post("/v2/models/tiny/infer", json=request_body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_malformed_binary_framing_is_400(client: TestClient) -> None:
    body, headers = binary_request()
    assert client.post("/v2/models/tiny/infer", content=body[:-10], headers=headers).status_code == 400
    bad = {"Inference-Header-Content-Length": str(len(body) + 5)}
    assert client.post("/v2/models/tiny/infer", content=body, headers=bad).status_code == 400
    assert client.post("/v2/models/tiny/infer", content=b"not json").status_code == 400
