"""Fixtures for the load tests: a model with real per-pixel work, and test pictures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.images import bench_image, encode
from bench.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def work_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 3x3 conv layers of 16 channels: ~80 ms at 256x256 on this 2-core machine, so that requests
    queue up and are in flight when the server is overloaded or told to stop."""
    return build_tiny_model(tmp_path_factory.mktemp("work") / "work.onnx", layers=8, channels=16, name="work")


def picture(height: int, width: int, seed: int = 0) -> bytes:
    """A PNG of a street-like scene (compresses like a photo, unlike noise)."""
    return encode(bench_image(height, width, seed=seed))
