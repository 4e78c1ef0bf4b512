"""Fixtures for server tests: in-process apps over a started Engine, and a real danet-serve subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.engine import Engine
from server.http.app import create_app
from server.settings import Settings
from tests.conftest import free_port

CPU_ONLY = ["CPUExecutionProvider"]


def make_settings(models: list[Path], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models": models,
        "providers": CPU_ONLY,
        "warmup_sizes": ["32x32"],
        "log_format": "text",
        "access_log": False,
        "grpc_port": -1,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_app(settings: Settings, *, start: bool = True) -> Iterator[tuple[TestClient, Engine]]:
    engine = Engine(settings)
    if start:
        asyncio.run(engine.start())
    app = create_app(settings, engine)
    try:
        with TestClient(app) as client:
            yield client, engine
    finally:
        asyncio.run(engine.close())


AppFactory = Callable[..., Any]


@pytest.fixture
def app_factory(tiny_onnx: Path) -> Iterator[AppFactory]:
    """``app_factory(**settings_overrides)`` -> (TestClient, Engine), closed at teardown."""
    stack: list[Any] = []

    def build(
        *, models: list[Path] | None = None, start: bool = True, **overrides: Any
    ) -> tuple[TestClient, Engine]:
        ctx = running_app(make_settings(models or [tiny_onnx], **overrides), start=start)
        stack.append(ctx)
        return ctx.__enter__()

    yield build
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(tiny_onnx: Path, tiny_onnx_no_logits: Path) -> Iterator[TestClient]:
    """A ready app serving ``tiny`` (default, with logits) and ``plain`` (no logits)."""
    with running_app(make_settings([tiny_onnx, tiny_onnx_no_logits])) as (test_client, _):
        yield test_client


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def danet_serve_command() -> list[str]:
    script = Path(sys.executable).with_name("danet-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.main"]


def start_server(
    tmp: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    *,
    wait_ready: bool = True,
    grpc: bool = False,
) -> ServerProcess:
    http_port = free_port()
    grpc_port = free_port() if grpc else -1
    log_path = tmp / f"danet-serve-{http_port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DANET_")}
    environment.update({"DANET_PROVIDERS": "CPUExecutionProvider", "DANET_LOG_FORMAT": "json"})
    environment.update(env or {})
    command = [
        *danet_serve_command(),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    server = ServerProcess(process, http_port, grpc_port, log_path)
    if wait_ready:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"danet-serve exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        server.terminate()
        raise AssertionError(f"danet-serve did not become ready:\n{server.log()}")
    return server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator[ServerProcess]:
    """A real ``danet-serve`` process (HTTP + gRPC) serving the tiny model."""
    server = start_server(tmp_path_factory.mktemp("live"), ["--model", str(tiny_onnx)], grpc=True)
    yield server
    server.terminate()
