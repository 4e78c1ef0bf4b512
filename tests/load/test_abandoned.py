"""Abandoned work never holds the engine: a caller that goes away takes its run with it.

One worker, a model whose 2048x2048 pass takes tens of seconds here. A client sends that pass and goes away
(gRPC deadline, then REST connection closed); the run is stopped (``RunOptions.terminate``), the metric
says so, and a small request sent right after is answered well inside the time the abandoned pass would
have taken. Runs against a real server process.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from bench.server_proc import ServerProcess
from bench.tiny_model import build_tiny_model
from protos.gen.inference import grpc_service_pb2 as pb
from protos.gen.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.load

BIG = 2048  # the abandoned pass: far longer than SMALL_TIMEOUT_S on this machine (see slow_onnx)
SMALL_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def slow_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sixteen 3x3 conv layers of 32 channels: ~40 s for one 2048x2048 pass on one thread here."""
    return build_tiny_model(
        tmp_path_factory.mktemp("slow") / "slow.onnx", layers=16, channels=32, name="slow"
    )


@pytest.fixture(scope="module")
def server(slow_onnx: Path) -> Iterator[ServerProcess]:
    env = {
        "DANET_WORKERS": "1",
        "DANET_INTRA_OP_THREADS": "1",
        "DANET_BATCHING": "off",
        "DANET_WARMUP_SIZES": "32x32",
        "DANET_ACCESS_LOG": "false",
    }
    with ServerProcess([slow_onnx], env=env) as proc:
        yield proc


def abandoned(server: ServerProcess, where: str) -> float:
    text = httpx.get(server.http_url + "/metrics", timeout=10).text
    found = re.search(rf'danet_abandoned_total{{model="slow",where="{where}"}} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def small_request_ok(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="image", datatype="UINT8", shape=[1, 32, 32, 3])
        request.outputs.add(name="labels")
        request.raw_input_contents.append(bytes(32 * 32 * 3))
        reply = stub.ModelInfer(request, timeout=SMALL_TIMEOUT_S)
    assert list(reply.outputs[0].shape) == [1, 32, 32]


def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_grpc_deadline_stops_the_running_pass(server: ServerProcess) -> None:
    before = abandoned(server, "run")
    with grpc.insecure_channel(
        server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="image", datatype="UINT8", shape=[1, BIG, BIG, 3])
        request.outputs.add(name="labels")
        request.raw_input_contents.append(np.zeros((BIG, BIG, 3), np.uint8).tobytes())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=2.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: abandoned(server, "run") > before)
    small_request_ok(server)  # the worker is free again: the 2048x2048 pass did not run to its end
    assert httpx.get(server.http_url + "/readyz", timeout=5).status_code == 200


def test_closed_http_connection_stops_the_running_pass(server: ServerProcess) -> None:
    before = abandoned(server, "run")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, BIG, BIG, 3],
                    "parameters": {"binary_data_size": BIG * BIG * 3},
                }
            ],
            "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + bytes(BIG * BIG * 3)
    host, port = server.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                f"Inference-Header-Content-Length: {len(header)}\r\n\r\n"
            ).encode()
            + body
        )
        wait_for(
            lambda: 'danet_queue_depth{model="slow"} 0.0' in httpx.get(server.http_url + "/metrics").text
        )
        time.sleep(1.0)  # the pass is running
    # the socket is closed: the server notices, cancels the handler, and the run stops
    wait_for(lambda: abandoned(server, "run") > before, timeout=20)
    small_request_ok(server)
