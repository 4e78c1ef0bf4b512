"""One danet-serve subprocess (REST + gRPC, API key required) shared by the client tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grpc.harness import OnnxReference
from tests.grpc.live_server import LiveServer

API_KEY = "client-test-key"


@pytest.fixture(scope="session")
def live_server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer([tiny_onnx], tmp_path_factory.mktemp("serve") / "serve.log", "--api-key", API_KEY)
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reference(tiny_onnx: Path) -> OnnxReference:
    return OnnxReference(tiny_onnx)
