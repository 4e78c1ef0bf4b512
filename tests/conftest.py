"""Shared fixtures: tiny contract-conforming ONNX models (see tests/onnx_fixtures.py) and test images.

``tests/__init__.py`` makes pytest put the repository root on ``sys.path``, so every test directory can
import ``tests.onnx_fixtures`` and its own helpers.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.server_proc import ServerProcess
from tests.onnx_fixtures import write_model


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4-class per-pixel RGB segmenter with labels, confidence and logits; named ``tiny``."""
    return write_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", model_name="tiny")


@pytest.fixture(scope="session")
def tiny_onnx_no_logits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same classifier without the ``logits`` output; named by its file stem ``plain``."""
    return write_model(tmp_path_factory.mktemp("plain") / "plain.onnx", logits=False)


def make_scene(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """RGB uint8 picture with solid red / green / blue / dark regions plus mild noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.int16)
    image[: height // 2, : width // 2] = (200, 30, 30)
    image[: height // 2, width // 2 :] = (30, 200, 30)
    image[height // 2 :, : width // 3] = (30, 30, 200)
    image[height // 2 :, width // 3 :] = (20, 20, 20)
    image += rng.integers(-15, 16, size=image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    out = io.BytesIO()
    picture.save(out, format=fmt, **params)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_process(
    models: Sequence[Path] = (),
    *args: str,
    env: dict[str, str] | None = None,
    grpc: bool = True,
    log_format: str = "json",
) -> ServerProcess:
    """A ``danet-serve`` subprocess set up for tests (CPU, one thread, no inherited DANET_* variables);
    ``.start()`` it (or use it as a context manager)."""
    settings = {
        "DANET_PROVIDERS": "CPUExecutionProvider",
        "DANET_INTRA_OP_THREADS": "1",
        "DANET_LOG_FORMAT": log_format,
        # references are computed at the upload's size (the preferred-size policy has its own tests)
        "DANET_INFER_AT_PREFERRED_SIZE": "false",
        **(env or {}),
    }
    return ServerProcess(
        models, env=settings, grpc=grpc, extra_args=args, ready_timeout_s=90, inherit_danet_env=False
    )
