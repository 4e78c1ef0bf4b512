"""A real server started with the default providers (TensorRT, CUDA, CPU) on this machine: no onnxruntime
provider errors on its output, one line saying which provider runs and why, the reason in ``/readyz``."""

from __future__ import annotations

from pathlib import Path

import httpx

from server.providers import GPU_PROVIDERS
from tests.conftest import server_process

PROVIDER_ERRORS = ("EP Error", "Require cuDNN", "[E:onnxruntime", "[W:onnxruntime", "Failed to load library")


def test_default_providers_start_without_provider_errors(tiny_onnx: Path) -> None:
    env = {"DANET_PROVIDERS": "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"}
    with server_process([tiny_onnx], env=env, grpc=False, log_format="text") as server:
        ready = httpx.get(f"{server.http_url}/readyz", timeout=10).json()
        log = server.log_text()
    for marker in PROVIDER_ERRORS:
        assert marker not in log, log[-3000:]
    provider = ready["models"]["tiny"]["provider"]
    lines = [
        line
        for line in log.splitlines()
        if "server.providers" in line and "active execution provider" in line
    ]
    assert len(lines) == 1 and f"tiny.onnx: active execution provider {provider} (" in lines[0], log[-3000:]
    reason = ready["models"]["tiny"]["fallback_reason"]
    if provider in GPU_PROVIDERS:
        assert reason is None and " INFO " in lines[0]
    else:  # a machine without a usable GPU: the reason is said once, and /readyz carries it
        assert ready["models"]["tiny"]["fallback"] is True
        assert reason and reason in lines[0]
