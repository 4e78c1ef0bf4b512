"""A missing or broken model file fails start-up with a clear message: non-zero exit, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench.server_proc import run_server_once
from tests.onnx_fixtures import write_model


def _missing(tmp: Path) -> Path:
    return tmp / "no-such-model.onnx"


def _random_bytes(tmp: Path) -> Path:
    path = tmp / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _empty_file(tmp: Path) -> Path:
    path = tmp / "empty.onnx"
    path.write_bytes(b"")
    return path


def _truncated(tmp: Path) -> Path:
    good = write_model(tmp / "good.onnx")
    path = tmp / "truncated.onnx"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def _wrong_contract(tmp: Path) -> Path:
    return write_model(tmp / "wrong-input.onnx", input_name="pixels")


def _empty_directory(tmp: Path) -> Path:
    path = tmp / "models"
    path.mkdir()
    return path


CASES: dict[str, Callable[[Path], Path]] = {
    "missing": _missing,
    "random-bytes": _random_bytes,
    "empty-file": _empty_file,
    "truncated": _truncated,
    "wrong-input-name": _wrong_contract,
    "empty-directory": _empty_directory,
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_model_fails_start_up_cleanly(name: str, tmp_path: Path) -> None:
    model = CASES[name](tmp_path)
    result = run_server_once([model], env={"DANET_LOG_FORMAT": "text"}, timeout_s=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"danet-serve started with a {name} model:\n{output[-2000:]}"
    assert "Traceback" not in output, output[-4000:]
    assert model.name in output, f"the message should name the file:\n{output[-2000:]}"
