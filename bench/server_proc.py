"""Run a real ``danet-serve`` in a subprocess on free loopback ports: the one launcher that benchmarks and
every test needing a separate server process use (tests configure it through ``tests.conftest.server_process``).

The server is the production entry point (the ``danet-serve`` script, or ``python -m server.main``),
configured through flags and ``DANET_*`` variables exactly as a user would. Its output goes to a log file so
that a test can show it when something fails and check that no traceback was printed. Ready means
``/readyz`` answers 200 (the gRPC server is bound before HTTP starts, and its health check follows readiness).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from bench import memory


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual race applies; good enough on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def danet_serve_command() -> list[str]:
    """The installed ``danet-serve`` script next to this interpreter, else ``python -m server.main``."""
    script = Path(sys.executable).with_name("danet-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.main"]


def server_command(
    models: Sequence[Path] = (), *, host: str, http_port: int, grpc_port: int, extra: Sequence[str] = ()
) -> list[str]:
    """The ``danet-serve`` command line (run with this interpreter, so the same environment)."""
    cmd = [*danet_serve_command(), "--host", host, "--http-port", str(http_port)]
    cmd += ["--grpc-port", str(grpc_port)]
    for model in models:
        cmd += ["--model", str(model)]
    return cmd + list(extra)


class ServerProcess:
    """``with ServerProcess([model]) as server: httpx.get(server.http_url + "/readyz")``.

    ``grpc=False`` starts no gRPC server (port -1). ``env`` adds ``DANET_*`` settings; the child
    otherwise inherits this process's environment (without its ``DANET_*`` variables when
    ``inherit_danet_env`` is False, as tests want). ``stop()`` sends SIGTERM and waits for the drain.
    """

    def __init__(
        self,
        models: Sequence[Path] = (),
        *,
        env: Mapping[str, str] | None = None,
        grpc: bool = True,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        ready_timeout_s: float = 180.0,
        log_path: Path | None = None,
        inherit_danet_env: bool = True,
    ) -> None:
        self.models = [Path(m) for m in models]
        self.host = host
        self.http_port = free_port(host)
        self.grpc_port = free_port(host) if grpc else -1
        self.extra_args = list(extra_args)
        self.ready_timeout_s = ready_timeout_s
        inherited = {k: v for k, v in os.environ.items() if inherit_danet_env or not k.startswith("DANET_")}
        self.env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="danet-serve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    # --- addresses -------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        return self.http_url

    @property
    def grpc_target(self) -> str:
        if self.grpc_port < 0:
            raise RuntimeError("this server was started without gRPC")
        return f"{self.host}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.pid

    # --- life cycle ------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        return server_command(
            self.models,
            host=self.host,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            extra=self.extra_args,
        )

    def start(self) -> ServerProcess:
        """Start the process and wait until ``/readyz`` answers 200; raises ServerStartError otherwise."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"danet-serve exited with code {self.process.returncode} before becoming ready:\n{self.log_tail()}"
                )
            if self.is_ready(timeout_s=2.0):
                return self
            time.sleep(0.1)
        self.kill()
        raise ServerStartError(
            f"danet-serve not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def is_ready(self, timeout_s: float = 5.0) -> bool:
        try:
            return httpx.get(f"{self.http_url}/readyz", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def terminate(self) -> None:
        """Send SIGTERM (graceful: stop accepting, drain, exit) without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait up to ``timeout_s`` (then SIGKILL); returns the exit code."""
        if self.process is None:
            return 0
        self.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait(self, timeout_s: float) -> int:
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.wait(timeout=timeout_s)

    # --- observation -----------------------------------------------------------------------------------
    def rss_bytes(self) -> int | None:
        return memory.rss_bytes(self.pid)

    def peak_rss_bytes(self) -> int | None:
        return memory.peak_rss_bytes(self.pid)

    def reset_peak(self) -> bool:
        return memory.reset_peak(self.pid)

    def log(self) -> str:
        return self.log_text()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_log and exc_type is None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


def run_server_once(
    models: Sequence[Path], *, env: Mapping[str, str] | None = None, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Start ``danet-serve`` expecting it to fail (bad model): returns the finished process with its output.

    The HTTP port is a free one, so a server that unexpectedly starts is killed after ``timeout_s``.
    """
    cmd = server_command(models, host="127.0.0.1", http_port=free_port(), grpc_port=-1)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(cmd, returncode=0, stdout=out, stderr="(still running: killed)")
