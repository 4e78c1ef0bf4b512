"""The serving path must not import torch (nor onnx): `make run` installs neither."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_serving_modules_import_neither_torch_nor_onnx(tmp_path: Path) -> None:
    code = (
        "import sys, server.main, server.http.app, server.engine, server.grpc.server, client.cli\n"
        "print(sorted(m for m in ('torch', 'onnx', 'tritonclient') if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
