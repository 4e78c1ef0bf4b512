"""One danet-serve subprocess (REST + gRPC, API key required) shared by the client tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.server_proc import ServerProcess
from tests.conftest import server_process
from tests.grpc.harness import OnnxReference

API_KEY = "client-test-key"


def keyed_server(tiny_onnx: Path, api_key: str) -> Iterator[ServerProcess]:
    server = server_process([tiny_onnx], "--api-key", api_key, log_format="text").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_server(tiny_onnx: Path) -> Iterator[ServerProcess]:
    yield from keyed_server(tiny_onnx, API_KEY)


@pytest.fixture(scope="session")
def reference(tiny_onnx: Path) -> OnnxReference:
    return OnnxReference(tiny_onnx)
