"""``danet-serve`` in a subprocess, for tests that need a separate process (tritonclient, the CLI).

The ports are picked free up front; readiness is the gRPC health check turning SERVING.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.contract import REPO_ROOT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("danet-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.main"]


class LiveServer:
    def __init__(
        self, models: list[Path], log_path: Path, *extra_args: str, env: dict[str, str] | None = None
    ):
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.log_path = log_path
        command = [
            *serve_command(),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--provider",
            "CPUExecutionProvider",
            "--intra-op-threads",
            "1",
            "--log-format",
            "text",
            *(arg for model in models for arg in ("--model", str(model))),
            *extra_args,
        ]
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> LiveServer:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"danet-serve exited with {self.process.returncode}:\n{self.log()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"danet-serve was not ready within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return int(self.process.returncode)
