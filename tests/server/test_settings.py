"""Settings from DANET_* variables and danet-serve flags; JSON log lines."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field, ValidationError

from server.flags import add_settings_flags, explain, overrides_from
from server.logging import JsonFormatter, RequestIdFilter, request_id
from server.main import build_parser, load_settings
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


# --- flags generated from the Settings model ---------------------------------------------------------


def _normalised(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_every_setting_with_its_description_and_variable() -> None:
    text = _normalised(build_parser().format_help())
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert f"{flag} " in text or f"{flag}," in text, f"{name} has no flag in --help"
        assert f"env DANET_{name.upper()}" in text, f"{name}'s variable is not in --help"
        description = _normalised(info.description or "").rstrip(".")
        assert description and description in text, f"{name}'s description is not its help text"


def test_contract_flag_names_parse() -> None:
    s = load_settings(
        [
            "--host",
            "127.0.0.1",
            "--model-repository",
            ".",
            "--model-control-mode",
            "explicit",
            "--load-model",
            "a",
            "--load-model",
            "b",
            "--repository-poll-s",
            "2.5",
            "--cors-origin",
            "https://a.example",
            "--log-format",
            "text",
            "--log-level",
            "DEBUG",
            "--max-upload-bytes",
            "1000",
            "--intra-op-threads",
            "2",
        ]
    )
    assert s.host == "127.0.0.1" and s.model_repository == Path(".")
    assert s.model_control_mode == "explicit" and s.load_models == ["a", "b"]
    assert s.repository_poll_s == 2.5 and s.cors_origins == ["https://a.example"]
    assert (s.log_format, s.log_level, s.max_upload_bytes, s.intra_op_threads) == ("text", "DEBUG", 1000, 2)


def _argv_for(name: str, value: Any) -> list[str] | None:
    """The flags that give ``name`` the value ``value`` (None when a flag cannot say it, e.g. text None)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    if isinstance(value, list):
        return [part for item in value for part in (flag, str(item))]
    if value is None:
        kind = Settings.model_fields[name].annotation
        return None if str in getattr(kind, "__args__", ()) or "SecretStr" in str(kind) else [flag, "none"]
    return [flag, str(value)]


def test_every_flag_gives_its_field_a_value() -> None:
    """Each field's flag (new fields included) parses its default back, and overrides the variable."""
    defaults = Settings()
    for name in Settings.model_fields:
        value = getattr(defaults, name)
        argv = _argv_for(name, value)
        if argv is None:
            continue
        parsed = load_settings(argv)
        assert getattr(parsed, name) == value, f"{argv} gave {getattr(parsed, name)!r}"


def test_generator_picks_up_new_fields() -> None:
    class More(Settings):
        new_timeout_s: float | None = Field(3.0, gt=0, description="A setting added later.")
        new_switch: bool = Field(False, description="A switch added later.")
        new_names: list[str] = Field(default_factory=list, description="Names added later.")
        new_mode: Literal["a", "b"] = Field("a", description="A choice added later.")

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_settings_flags(parser, More)
    text = _normalised(parser.format_help())
    for phrase in ("--new-timeout-s SECONDS", "A setting added later", "env DANET_NEW_TIMEOUT_S"):
        assert phrase in text
    args = parser.parse_args(
        ["--new-timeout-s", "none", "--new-switch", "--new-name", "x", "--new-names", "y", "--new-mode", "b"]
    )
    s = More(**overrides_from(args, More))
    assert s.new_timeout_s is None and s.new_switch and s.new_names == ["x", "y"] and s.new_mode == "b"
    assert More(**overrides_from(parser.parse_args([]), More)).new_timeout_s == 3.0


def test_precedence_flag_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings([]).require_gpu is False and load_settings([]).models == []
    monkeypatch.setenv("DANET_REQUIRE_GPU", "true")
    monkeypatch.setenv("DANET_MODELS", "env.onnx")
    assert load_settings([]).require_gpu is True and load_settings([]).models == [Path("env.onnx")]
    s = load_settings(["--no-require-gpu", "--model", "flag.onnx"])
    assert s.require_gpu is False and s.models == [Path("flag.onnx")]


def test_bad_value_is_explained_with_flag_and_variable() -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(["--http-port", "70000", "--api-key", "x" * 3, "--max-queue", "many"])
    text = explain(caught.value, Settings)
    assert "http_port (--http-port / DANET_HTTP_PORT)" in text and "70000" in text
    assert "--max-queue / DANET_MAX_QUEUE" in text and "'many'" in text
    assert "\n" not in text
    with pytest.raises(ValidationError) as caught:
        Settings(api_key=123)  # type: ignore[arg-type]
    assert "123" not in explain(caught.value, Settings)  # secrets are never echoed
    with pytest.raises(ValidationError) as caught:
        load_settings(["--model", "a.onnx", "--model-repository", "."])
    assert explain(caught.value, Settings).startswith("give models (--model) or model_repository")


def test_none_in_a_variable_means_none_as_in_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optional numbers, paths and choices take ``none`` from DANET_* variables too; text keeps it."""
    monkeypatch.setenv("DANET_CPU_ARENA_MAX_MODEL_MB", "none")
    monkeypatch.setenv("DANET_GRPC_MAX_CONNECTION_AGE_S", " None ")
    monkeypatch.setenv("DANET_DEFAULT_MODEL", "none")
    settings = load_settings([])
    assert settings.cpu_arena_max_model_mb is None and settings.grpc_max_connection_age_s is None
    assert settings.default_model == "none"  # a model may be called that
    monkeypatch.setenv("DANET_CPU_ARENA_MAX_MODEL_MB", "nothing")
    with pytest.raises(ValidationError, match="cpu_arena_max_model_mb"):
        load_settings([])
