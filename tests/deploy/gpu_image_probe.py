"""Runs inside ``danet-serve:gpu`` without a GPU (tests/deploy/test_gpu_image.py mounts it, with
deploy/docker/check_image.py next to it) and prints one JSON report on stdout:

- ``providers``: what onnxruntime offers;
- ``problems`` / ``libraries``: the build-time gate again, and what ldd resolved for the CUDA provider and
  cuDNN with the image's own loader configuration;
- ``fallback``: ``danet-serve`` started as the image starts it: ready or not, its log, its exit status
  after SIGTERM;
- ``require_gpu``: the same with ``DANET_REQUIRE_GPU=true``: its exit status and log.

One container for all of it: on the vfs storage driver every container start copies the whole image.
Standard library only (plus what the image holds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import check_image  # mounted next to this file

HTTP_PORT = 18000
READY_TIMEOUT_S = 150.0
EXIT_TIMEOUT_S = 120.0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def serve(extra_env: dict[str, str], wait_ready: bool) -> dict[str, object]:
    """Start ``danet-serve``; with ``wait_ready`` wait for /readyz then SIGTERM, else wait for it to exit."""
    env = {
        **os.environ,
        "DANET_HTTP_PORT": str(HTTP_PORT),
        "DANET_GRPC_PORT": str(HTTP_PORT + 1),
        **extra_env,
    }
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(["danet-serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        ready = False
        deadline = time.monotonic() + READY_TIMEOUT_S
        while wait_ready and proc.poll() is None and time.monotonic() < deadline:
            if _ready(HTTP_PORT):
                ready = True
                break
            time.sleep(0.5)
        if proc.poll() is None and wait_ready:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.seek(0)
        return {"ready": ready, "exit": code, "log": log.read()[-20000:]}


def main() -> int:
    import onnxruntime  # noqa: PLC0415 - after the loader set-up of the image, as the server does

    report = {
        "providers": onnxruntime.get_available_providers(),
        "problems": check_image.problems("gpu"),
        "libraries": check_image.gpu_libraries(),
        "ld_so_conf": Path("/etc/ld.so.conf.d/danet-nvidia-wheels.conf").read_text(encoding="utf-8").split(),
        "fallback": serve({}, wait_ready=True),
        "require_gpu": serve({"DANET_REQUIRE_GPU": "true"}, wait_ready=False),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
