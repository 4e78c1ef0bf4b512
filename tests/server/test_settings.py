"""Settings from DANET_* variables and danet-serve flags; JSON log lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.logging import JsonFormatter, RequestIdFilter, request_id
from server.main import load_settings
from server.settings import Settings, parse_size


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.http_port, s.grpc_port) == ("0.0.0.0", 8000, 8001)
    assert s.models == [] and s.api_key is None and s.batching == "auto"
    assert s.cudnn_conv_algo_search == "HEURISTIC" and s.arena_extend_strategy == "kSameAsRequested"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANET_MODELS", "a.onnx, models/")
    monkeypatch.setenv("DANET_PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]')
    monkeypatch.setenv("DANET_API_KEY", "k")
    monkeypatch.setenv("DANET_HTTP_PORT", "9000")
    monkeypatch.setenv("DANET_REQUIRE_GPU", "true")
    monkeypatch.setenv("DANET_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("DANET_WARMUP_SIZES", "512x1024,preferred")
    s = Settings()
    assert s.models == [Path("a.onnx"), Path("models")]
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.api_key_value() == "k" and s.http_port == 9000 and s.require_gpu
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.warmup_sizes == ["512x1024", "preferred"]
    monkeypatch.setenv("DANET_API_KEY", "")
    assert Settings().api_key is None


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANET_HTTP_PORT", "9000")
    monkeypatch.setenv("DANET_API_KEY", "env-key")
    s = load_settings(
        [
            "--http-port",
            "8100",
            "--grpc-port",
            "-1",
            "--model",
            "x.onnx",
            "--model",
            "dir",
            "--api-key",
            "flag-key",
            "--provider",
            "CPUExecutionProvider",
            "--require-gpu",
            "--batching",
            "on",
            "--warmup-size",
            "64x64",
        ]
    )
    assert s.http_port == 8100 and s.grpc_port == -1
    assert s.models == [Path("x.onnx"), Path("dir")] and s.api_key_value() == "flag-key"
    assert s.providers == ["CPUExecutionProvider"] and s.require_gpu and s.batching == "on"
    assert s.warmup_sizes == ["64x64"]
    assert load_settings([]).http_port == 9000  # untouched flags leave the environment in charge


def test_invalid_values() -> None:
    with pytest.raises(ValidationError):
        Settings(http_port=70000)
    with pytest.raises(ValidationError):
        Settings(warmup_sizes=["big"])
    with pytest.raises(ValidationError):
        Settings(batching="sometimes")
    assert parse_size("512") == (512, 512) and parse_size("256x512") == (256, 512)
    with pytest.raises(ValueError):
        parse_size("0x5")


def test_json_log_line_carries_request_id() -> None:
    record = logging.LogRecord("server.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.model = "tiny"
    token = request_id.set("rid-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello world" and entry["level"] == "INFO"
    assert entry["request_id"] == "rid-1" and entry["model"] == "tiny"
