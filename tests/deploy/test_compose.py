"""docker-compose.yml: valid for Compose, and wired to the real ports, endpoints, settings and scripts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from server.settings import Settings
from tests import static_checks as sc
from tests.deploy.conftest import compose_commands, duration_s

SERVERS = ("danet", "danet-gpu")


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["target"]: volume for volume in service.get("volumes", [])}


def test_schema_valid() -> None:
    assert sc.compose_schema_errors() == []


def test_schema_check_rejects_a_misspelt_key() -> None:
    document = sc.load_yaml(sc.COMPOSE_FILE)
    document["services"]["danet"]["healthcheck"]["start_perod"] = "10s"
    assert any("start_perod" in line for line in sc.compose_schema_errors(document))


@pytest.mark.parametrize("profile", sc.COMPOSE_PROFILES)
def test_compose_config_accepts_every_profile(profile: str | None, compose_all: dict[str, Any]) -> None:
    assert sc.compose_config(profile)["services"]


def test_compose_config_rejects_an_undeclared_volume(tmp_path: Path, compose_all: dict[str, Any]) -> None:
    # Something the JSON schema cannot see: a service mounting a named volume that is never declared.
    document = yaml.safe_load(sc.COMPOSE_FILE.read_text(encoding="utf-8"))
    broken = copy.deepcopy(document)
    del broken["volumes"]["tensorrt-cache"]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    with pytest.raises(ValueError, match="tensorrt-cache"):
        sc.compose_config(None, path)


def test_plain_up_starts_only_the_cpu_server(compose_all: dict[str, Any]) -> None:
    services = sc.compose_config(None)["services"]
    assert set(services) == {"danet"}
    assert services["danet"]["build"]["target"] == "cpu"


def test_gpu_profile_reserves_an_nvidia_gpu(compose_all: dict[str, Any]) -> None:
    gpu = sc.compose_config("gpu")["services"]["danet-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["DANET_REQUIRE_GPU"] == "true"


@pytest.mark.parametrize("name", SERVERS)
def test_server_service(name: str, compose_all: dict[str, Any], probe_client) -> None:
    service = compose_all["services"][name]
    assert service["restart"] in ("unless-stopped", "always")
    assert {(p["target"], p["published"], p.get("host_ip")) for p in service["ports"]} == {
        (DEFAULT_HTTP_PORT, str(DEFAULT_HTTP_PORT), "127.0.0.1"),  # this machine only, unless told
        (DEFAULT_GRPC_PORT, str(DEFAULT_GRPC_PORT), "127.0.0.1"),
    }

    check = service["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "/usr/local/bin/danet-healthcheck"]
    assert check["test"][3] == "/readyz"
    assert probe_client.get("/readyz").status_code == 503  # a real route, not ready during warm-up
    assert duration_s(check["start_period"]) >= 60

    env = service["environment"]
    # Docker sends SIGKILL after stop_grace_period; the server needs its whole drain time before that.
    assert duration_s(service["stop_grace_period"]) > float(env["DANET_SHUTDOWN_GRACE_S"]) + 5

    mounts = _mounts(service)
    assert mounts["/models"]["source"] == "models"
    assert mounts[env["DANET_TRT_CACHE_DIR"]]["source"] == "tensorrt-cache"


@pytest.mark.parametrize("name", SERVERS)
def test_server_is_confined(name: str, compose_all: dict[str, Any]) -> None:
    service = compose_all["services"][name]
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["read_only"] is True
    assert 0 < int(service["mem_limit"]) <= 64 * 2**30 and 0 < service["pids_limit"] <= 4096


def test_publishing_wider_is_one_variable(compose_all: dict[str, Any]) -> None:
    binary = sc.compose_binary()
    assert binary is not None
    done = subprocess.run(
        [str(binary), "--file", str(sc.COMPOSE_FILE), "config", "--format", "json"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DANET_PUBLISH_HTTP": "0.0.0.0:8000"},
        cwd=sc.COMPOSE_FILE.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    wide = json.loads(done.stdout)
    ports = {p["target"]: p for p in wide["services"]["danet"]["ports"]}
    assert (
        ports[DEFAULT_HTTP_PORT]["host_ip"] == "0.0.0.0" and ports[DEFAULT_HTTP_PORT]["published"] == "8000"
    )
    assert ports[DEFAULT_GRPC_PORT]["host_ip"] == "127.0.0.1"


@pytest.mark.parametrize("name", SERVERS)
def test_server_environment_is_valid_settings(
    name: str, compose_all: dict[str, Any], setting_env_names: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = compose_all["services"][name]["environment"]
    assert set(env) <= setting_env_names, f"not settings: {sorted(set(env) - setting_env_names)}"
    for key in list(setting_env_names):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # every default the compose file passes must parse
    assert settings.models == [] and settings.api_key is None  # empty = embedded model, no auth
    assert settings.require_api_key is False  # on 127.0.0.1 by default; DANET_REQUIRE_API_KEY=true to insist


def test_export_service(compose_all: dict[str, Any], console_scripts: dict[str, str]) -> None:
    export = compose_all["services"]["export"]
    assert export["profiles"] == ["export"] and export["build"]["target"] == "export"
    assert export["restart"] == "no"
    assert export["entrypoint"] == ["danet-export"] and "danet-export" in console_scripts
    command = export["command"]
    checkpoint, output = command[0], command[command.index("--output") + 1]
    mounts = _mounts(export)
    assert mounts["/checkpoints"]["read_only"] is True and checkpoint.startswith("/checkpoints/")
    # It writes into the same volume the servers read with DANET_MODELS=/models.
    assert mounts["/models"]["source"] == _mounts(compose_all["services"]["danet"])["/models"]["source"]
    assert output.startswith("/models/") and output.endswith(".onnx")


def test_usage_comments_name_real_profiles_and_services(compose_all: dict[str, Any]) -> None:
    # The usage lines at the top of the file are what people copy; keep them true.
    commands = compose_commands(sc.COMPOSE_FILE.read_text(encoding="utf-8"))
    assert {profile for profile, _ in commands} == {None, "gpu", "export"}
    for profile, services in commands:
        enabled = sc.compose_config(profile)["services"]
        assert set(services) <= set(enabled), f"--profile {profile} does not enable {services}"
