"""Start-up problems (a missing or broken model, a busy port, a bad setting) end the process with one clear
line and a non-zero status (2 for usage errors), without a traceback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.server_proc import danet_serve_command, run_server_once
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


# --- start-up problems in one line, seen from outside the process --------------------------------------

NOISE = (
    "Traceback",
    "Event loop is closed",
    "Task exception was never retrieved",
    "[E:onnxruntime",
    "EP Error",
)


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DANET_")}
    full_env = {**clean, "PYTHONUNBUFFERED": "1", "DANET_LOG_FORMAT": "text", **(env or {})}
    return subprocess.run(
        [*danet_serve_command(), *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("danet-serve: error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


@contextlib.contextmanager
def _taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_busy_http_port_is_one_line_with_the_way_out() -> None:
    with _taken_port() as port:
        result = _serve(["--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "-1"])
    assert result.returncode == 1
    line = _one_error_line(result)
    assert (result.stdout + result.stderr).strip() == line  # nothing else: it fails before loading models
    assert f"HTTP port {port} on 127.0.0.1 is already in use" in line
    for way_out in ("--http-port PORT", "DANET_HTTP_PORT=PORT", 'make run ARGS="--http-port 8080"'):
        assert way_out in line


def test_busy_grpc_port_is_one_line_with_the_way_out() -> None:
    with _taken_port() as port:
        result = _serve(["--host", "127.0.0.1", "--http-port", "0", "--grpc-port", str(port)])
    assert result.returncode == 1
    line = _one_error_line(result)
    assert f"gRPC port {port} on 127.0.0.1 is already in use" in line
    for way_out in ("--grpc-port PORT", "DANET_GRPC_PORT=PORT", 'make run ARGS="--grpc-port 8081"'):
        assert way_out in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--http-port", "70000"],
            {},
            "http_port (--http-port / DANET_HTTP_PORT): Input should be less than or equal",
        ),
        (
            [],
            {"DANET_WORKERS": "many"},
            "workers (--workers / DANET_WORKERS): Input should be a valid integer",
        ),
        (["--batching", "sometimes"], {}, "argument --batching: invalid choice"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--model", "no/such/model.onnx"], {}, "--model no/such/model.onnx: no such file or directory"),
        (["--http-port", "9100", "--grpc-port", "9100"], {}, "--http-port and --grpc-port are both 9100"),
        (["--model", "a.onnx", "--model-repository", "."], {}, "give models (--model) or model_repository"),
        ([], {"DANET_MODEL_CONTROL_MODE": "poll"}, "need model_repository (--model-repository)"),
        (["--host", "no-such-host.invalid"], {}, "cannot listen on host 'no-such-host.invalid'"),
    ],
    ids=[
        "range",
        "env-type",
        "choice",
        "unknown-flag",
        "missing-model",
        "same-ports",
        "two-sources",
        "mode",
        "host",
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], env: dict[str, str], expected: str) -> None:
    result = _serve(args, env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in _one_error_line(result)


def test_require_gpu_on_a_machine_without_cuda_is_one_line(tiny_onnx: Path) -> None:
    from server.providers import cuda_problem

    if cuda_problem() is None:
        pytest.skip("a CUDA GPU is present here; this covers machines without one")
    result = _serve(["--http-port", "0", "--grpc-port", "-1", "--model", str(tiny_onnx), "--require-gpu"])
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "require_gpu is set" in line and "CUDA" in line
