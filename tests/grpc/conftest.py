"""Fixtures: a real, ready gRPC server on port 0 over a tiny ONNX model (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.grpc.harness import OnnxReference, ServerThread, settings_for


@pytest.fixture(scope="module")
def grpc_server(tiny_onnx: Path) -> Iterator[ServerThread]:
    """One ready server for a test module (max message 8 MiB so both sides of 4 MiB are testable)."""
    server = ServerThread(settings_for(tiny_onnx, grpc_max_message_bytes=8 * 1024 * 1024))
    yield server
    server.stop()


@pytest.fixture
def channel(grpc_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc_server.channel() as ch:
        yield ch


@pytest.fixture(scope="session")
def reference(tiny_onnx: Path) -> OnnxReference:
    return OnnxReference(tiny_onnx)
