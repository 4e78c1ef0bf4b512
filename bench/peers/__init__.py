"""Peer servers for ``danet-bench --peers``: the same ONNX file behind servers people use instead.

Each peer is a minimal app written the way its documentation shows (``kserve_app.py``, ``litserve_app.py``
beside this file), run as its own process by the interpreter of the peers' environment (``make peers``
creates ``.venv-peers``: KServe pins protobuf below 7, which danet-serve's stubs cannot share), with the same
onnxruntime version and thread count as danet-serve. Nothing here imports a peer package.

* ``kserve``: the KServe model server, Open Inference Protocol over gRPC, asking for ``labels`` only; it
  is compared with danet-serve's own KServe v2 path (same request bytes).
* ``litserve``: LitServe, ``POST /predict`` with a multipart upload, answering the palette PNG; it is
  compared with danet-serve's ``POST /segment`` (same upload, same work).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.clients import HttpSegmenter, KServeGrpcInfer, Segmenter
from bench.server_proc import free_port

PEERS = ("kserve", "litserve")
APPS = Path(__file__).resolve().parent
DEFAULT_PYTHON = APPS.parents[1] / ".venv-peers" / "bin" / "python"
PACKAGES = {"kserve": "kserve", "litserve": "litserve"}
#: A peer's default request timeout must not cut a slow model's request short (LitServer's is 30 s); this
#: only lets long requests finish, it does not change how the peer runs them.
REQUEST_TIMEOUT_S = 3600
MODEL_NAME = "danet"


class PeerUnavailable(RuntimeError):
    """The peer's environment or package is missing; the run reports it as skipped."""


@dataclass
class PeerProcess:
    kind: str
    python: Path
    model: Path
    threads: int
    ready_timeout_s: float = 600.0
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.kind not in PEERS:
            raise ValueError(f"peers are {', '.join(PEERS)}; got {self.kind!r}")
        self.port = free_port(self.host)
        self.grpc_port = free_port(self.host)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"peer-{self.kind}-", suffix=".log")[1])
        self.versions: dict[str, str] = {}

    @property
    def key(self) -> str:
        return f"peer-{self.kind}"

    def command(self) -> list[str]:
        app = str(APPS / f"{self.kind}_app.py")
        if self.kind == "kserve":
            return [
                str(self.python), app, "--model_name", MODEL_NAME, "--model_path", str(self.model),
                "--threads", str(self.threads), "--http_port", str(self.port), "--grpc_port", str(self.grpc_port),
            ]  # fmt: skip
        return [
            str(self.python), app, "--model", str(self.model), "--threads", str(self.threads),
            "--port", str(self.port), "--timeout", str(REQUEST_TIMEOUT_S),
        ]  # fmt: skip

    def _ready_url(self) -> str:
        base = f"http://{self.host}:{self.port}"
        return f"{base}/v2/models/{MODEL_NAME}/ready" if self.kind == "kserve" else f"{base}/health"

    def probe_versions(self) -> dict[str, str]:
        """The peer's package and onnxruntime versions, from its own interpreter (PeerUnavailable if absent)."""
        if not self.python.exists():
            raise PeerUnavailable(f"no peer environment at {self.python} (run `make peers`)")
        code = (
            "import importlib.metadata as m, json; "
            f"print(json.dumps({{p: m.version(p) for p in ({PACKAGES[self.kind]!r}, 'onnxruntime')}}))"
        )
        done = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise PeerUnavailable(
                f"{self.kind} is not installed in {self.python}: {done.stderr.strip()[-300:]}"
            )
        self.versions = json.loads(done.stdout)
        return self.versions

    def start(self) -> PeerProcess:
        self.probe_versions()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                cwd=tempfile.gettempdir(),
            )  # fmt: skip
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self._ready_url(), timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.kind} not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    def client(self, image: np.ndarray, upload: bytes, content_type: str) -> Segmenter:
        """The client measured against this peer: the same request as danet-serve's matching path."""
        if self.kind == "kserve":
            return KServeGrpcInfer(f"{self.host}:{self.grpc_port}", image, model=MODEL_NAME)
        return HttpSegmenter(
            f"http://{self.host}:{self.port}", upload, content_type=content_type, path="/predict"
        )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM to the peer's whole process group (LitServe's workers are child processes), then SIGKILL."""
        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # children that outlived the parent
            return


def start_peers(
    kinds: list[str], model: Path, threads: int, python: Path | None = None
) -> tuple[list[PeerProcess], dict[str, str]]:
    """Start every requested peer; returns the running ones and, per peer that could not start, why."""
    running: list[PeerProcess] = []
    failed: dict[str, str] = {}
    for kind in kinds:
        peer = PeerProcess(kind, python or DEFAULT_PYTHON, model, threads)
        try:
            running.append(peer.start())
        except Exception as exc:
            failed[peer.key] = " ".join(str(exc).split())[:400]
    return running, failed


__all__ = ["PEERS", "PeerProcess", "PeerUnavailable", "start_peers"]
