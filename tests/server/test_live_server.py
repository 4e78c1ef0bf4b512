"""A real ``danet-serve`` process: HTTP over a socket, tritonclient.http, SIGTERM draining, start-up errors.

tritonclient.http is fine in this process: only tritonclient.grpc registers the ``inference`` protobuf
symbols that our own generated stubs also define, and the server runs in its own process anyway.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import InferenceServerException

from bench.server_proc import ServerProcess, danet_serve_command
from common.contract import DEFAULT_ONNX
from tests.conftest import encode, make_scene, server_process
from tests.onnx_fixtures import reference_logits

SCENE = make_scene(40, 56)


def test_segment_over_http(live_server: ServerProcess) -> None:
    response = httpx.post(
        live_server.url + "/segment", files={"image": ("x.png", encode(SCENE), "image/png")}
    )
    assert response.status_code == 200
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (56, 40) and picture.mode == "P"
    np.testing.assert_array_equal(np.asarray(picture), reference_logits(SCENE[None])[0].argmax(0))
    assert response.headers["x-danet-provider"] == "CPUExecutionProvider"
    assert response.headers["x-request-id"]


def test_json_logs_carry_request_id(live_server: ServerProcess) -> None:
    response = httpx.get(live_server.url + "/v1/models", headers={"X-Request-ID": "trace-me-42"})
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in live_server.log().splitlines() if line.startswith("{")]
        hits = [entry for entry in lines if entry.get("request_id") == "trace-me-42"]
        if hits:
            assert hits[0]["path"] == "/v1/models" and hits[0]["status"] == 200
            break
        time.sleep(0.05)
    else:
        pytest.fail("no JSON access log line with the request id")
    assert any("active execution provider" in entry["message"] for entry in lines)


def test_upload_limit_stops_reading_mid_stream(tmp_path: Path, tiny_onnx: Path) -> None:
    server = server_process([tiny_onnx], "--max-upload-bytes", "10000").start()
    try:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
            sock.sendall(
                b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(4):  # 16 KiB of a body that would be 10 MiB: the answer comes before the rest
                sock.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
            reply = b""
            while b"payload_too_large" not in reply:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        assert reply.startswith(b"HTTP/1.1 413"), reply
        assert b'"payload_too_large"' in reply
    finally:
        assert server.stop() == 0


def test_tritonclient_http(live_server: ServerProcess) -> None:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{live_server.http_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("tiny")
        assert meta["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        batch = np.stack([SCENE, make_scene(40, 56, seed=5)])
        reference = reference_logits(batch)

        # default: every output, binary
        image = triton_http.InferInput("image", list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        result = client.infer("tiny", [image])
        np.testing.assert_array_equal(result.as_numpy("labels"), reference.argmax(1))
        np.testing.assert_allclose(result.as_numpy("logits"), reference, rtol=1e-5, atol=1e-5)

        # JSON input and JSON output
        image = triton_http.InferInput("image", list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch, binary_data=False)
        wanted = [triton_http.InferRequestedOutput("labels", binary_data=False)]
        result = client.infer("tiny", [image], outputs=wanted, model_version="1", request_id="r7")
        np.testing.assert_array_equal(result.as_numpy("labels"), reference.argmax(1))
        assert result.get_response()["id"] == "r7"

        with pytest.raises(InferenceServerException, match="nope"):
            client.infer("nope", [image])
        bad = triton_http.InferInput("image", [1, 40, 56, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 40, 56, 3), np.float32))
        with pytest.raises(InferenceServerException, match="UINT8"):
            client.infer("tiny", [bad])
    finally:
        client.close()


def test_metrics_endpoint_live(live_server: ServerProcess) -> None:
    httpx.post(live_server.url + "/segment", content=encode(SCENE), headers={"Content-Type": "image/png"})
    text = httpx.get(live_server.url + "/metrics").text
    assert 'danet_http_requests_total{method="POST",route="/segment",status="200"}' in text
    assert 'danet_model_provider{model="tiny",provider="CPUExecutionProvider"} 1.0' in text


def test_sigterm_finishes_in_flight_request_then_exits(tmp_path: Path, tiny_onnx: Path) -> None:
    server = server_process([tiny_onnx]).start()
    image = encode(make_scene(64, 64))
    result: dict[str, object] = {}

    def slow_upload() -> None:
        def chunks():
            yield image[:100]
            time.sleep(1.0)  # the request is in flight when SIGTERM arrives
            yield image[100:]

        try:
            result["response"] = httpx.post(
                server.url + "/segment?format=json",
                content=chunks(),
                headers={"Content-Type": "image/png"},
                timeout=30,
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=slow_upload)
    thread.start()
    time.sleep(0.4)
    server.process.send_signal(15)
    thread.join(30)
    assert server.process.wait(30) == 0, server.log()
    response = result.get("response")
    assert isinstance(response, httpx.Response), result
    assert response.status_code == 200 and response.json()["width"] == 64
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)
    assert "shutting down" in server.log()


def test_bad_model_file_is_a_clear_error_and_nonzero_exit(tmp_path: Path) -> None:
    junk = tmp_path / "broken.onnx"
    junk.write_bytes(b"this is not an onnx model")
    done = subprocess.run(
        [
            *danet_serve_command(),
            "--model",
            str(junk),
            "--http-port",
            "0",
            "--grpc-port",
            "-1",
            "--log-format",
            "text",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "danet-serve: error: cannot load" in done.stderr and str(junk) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_invalid_configuration_exit_code(tmp_path: Path) -> None:
    done = subprocess.run(
        [*danet_serve_command(), "--http-port", "70000"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "http_port" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not DEFAULT_ONNX.is_file(), reason=f"embedded default model {DEFAULT_ONNX} not built yet")
def test_no_arguments_serves_the_embedded_default_model(tmp_path: Path) -> None:
    server = server_process().start()
    try:
        image = make_scene(96, 128, seed=9)
        response = httpx.post(
            server.url + "/segment", files={"image": ("x.png", encode(image), "image/png")}, timeout=120
        )
        assert response.status_code == 200
        picture = Image.open(io.BytesIO(response.content))
        assert picture.size == (128, 96) and picture.mode == "P"
        session = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
        direct = session.run(["labels"], {"image": image[None]})[0][0]
        np.testing.assert_array_equal(np.asarray(picture), direct)
        models = httpx.get(server.url + "/v1/models").json()["models"]
        assert models[0]["name"] == "danet-synthetic"
    finally:
        assert server.stop() == 0
