"""docs/deploy.md: the commands, variables and paths it tells operators to use exist."""

from __future__ import annotations

import re
from typing import Any

from tests import static_checks as sc
from tests.deploy.conftest import compose_commands

DOC = (sc.REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
COMPOSE_TEXT = sc.COMPOSE_FILE.read_text(encoding="utf-8")


def test_compose_commands_name_real_profiles_and_services(compose_all: dict[str, Any]) -> None:
    commands = compose_commands(DOC)
    assert {profile for profile, _ in commands} >= {None, "gpu", "export"}
    for profile, services in commands:
        assert set(services) <= set(sc.compose_config(profile)["services"]), (profile, services)


def test_kubectl_paths_exist() -> None:
    paths = re.findall(r"kubectl apply -[kf] (\S+)", DOC)
    assert paths
    for path in paths:
        assert (sc.REPO_ROOT / path).exists(), path


def test_variables_exist(setting_env_names: set[str]) -> None:
    for name in set(re.findall(r"\b(DANET_[A-Z0-9_]+)\b", DOC)):
        # Either a server setting, or a Compose-only variable that docker-compose.yml interpolates.
        assert name in setting_env_names or f"${{{name}:-" in COMPOSE_TEXT, name
    for name in set(re.findall(r"\b(EXPORT_[A-Z_]+)\b", DOC)):
        assert f"${{{name}:-" in COMPOSE_TEXT, name


def test_build_arguments_exist() -> None:
    global_args, stages = sc.parse_dockerfile(sc.DOCKERFILE.read_text(encoding="utf-8"))
    declared = set(global_args) | {
        inst.args.split("=")[0] for stage in stages.values() for inst in stage.all("ARG")
    }
    section = DOC.split("### Build arguments", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE))
    assert documented == declared
