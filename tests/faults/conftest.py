"""A real ``danet-serve`` subprocess on the tiny per-pixel model, shared by the fault tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.server_proc import ServerProcess

#: The byte cap the fault server runs with (oversize cases send a little more than this).
MAX_UPLOAD_BYTES = 1_000_000


@pytest.fixture(scope="module")
def fault_server(tiny_onnx: Path) -> Iterator[ServerProcess]:
    env = {
        "DANET_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "DANET_LOG_LEVEL": "WARNING",
        "DANET_ACCESS_LOG": "false",
        "DANET_INFER_AT_PREFERRED_SIZE": "false",  # the corpus compares with the model run at full size
    }
    server = ServerProcess([tiny_onnx], env=env)
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
        log = server.log_text()
        assert code == 0, f"danet-serve exited with {code}:\n{server.log_tail()}"
        assert "Traceback" not in log, f"the server logged a traceback:\n{log[-4000:]}"
