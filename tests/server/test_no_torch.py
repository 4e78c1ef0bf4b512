"""The serving path and the client import neither torch nor onnx (`make run` installs neither), nor
tritonclient (its `inference.*` protobuf symbols would clash with our KServe stubs), nor ray (only the Ray Serve
application, server/ray_app.py, needs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_serving_modules_import_neither_torch_nor_onnx(tmp_path: Path) -> None:
    code = (
        "import sys, server.main, server.http.app, server.engine, server.grpc.server\n"
        "import client, client.cli, client._grpc, client._rest\n"
        "print(sorted(m for m in ('torch', 'onnx', 'tritonclient', 'ray') if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
