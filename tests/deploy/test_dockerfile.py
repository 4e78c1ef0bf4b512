"""The Dockerfile: hadolint-clean, and its runtime targets keep their promises (non-root, healthcheck on
/readyz, the wheel without torch or a toolchain)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib

import pytest

from common.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from tests import static_checks as sc
from tests.deploy.conftest import duration_s

RUNTIME_TARGETS = ("cpu", "gpu")
# hadolint pragmas are allowed only with a reason on the comment lines right above them.
IGNORE_PRAGMA = re.compile(r"^#\s*hadolint\s+ignore=")


def _env(stage: sc.Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for inst in stage.all("ENV"):
        for item in shlex.split(inst.args):
            key, _, value = item.partition("=")
            values[key] = value
    return values


def _copy_sources(inst: sc.Instruction) -> list[str]:
    """Source paths of a COPY (every argument but the destination, options skipped)."""
    args = [a for a in inst.args.split() if not a.startswith("--")]
    return [a.rstrip("/") for a in args[:-1]]


def test_hadolint_reports_nothing() -> None:
    assert sc.hadolint_findings() == []


def test_hadolint_gate_catches_a_real_problem(tmp_path) -> None:
    # The gate above is only worth something if hadolint runs and fails: feed it a classic mistake.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get install curl\nUSER root\nCMD python -V\n")
    codes = " ".join(sc.hadolint_findings(bad))
    assert "DL3008" in codes and "DL3025" in codes


def test_every_hadolint_ignore_is_justified() -> None:
    lines = sc.DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if IGNORE_PRAGMA.match(line.strip()):
            reason = lines[number - 1].strip() if number else ""
            assert reason.startswith("#") and not IGNORE_PRAGMA.match(reason) and len(reason) > 20, (
                f"Dockerfile:{number + 1}: hadolint ignore without a reason on the line above"
            )


def test_stages(dockerfile_stages: dict[str, sc.Stage]) -> None:
    assert set(dockerfile_stages) == {"builder", "native", "cpu", "gpu", "gpu-report", "export"}
    # `docker build .` builds the last stage: the CPU server.
    assert list(dockerfile_stages)[-1] == "cpu"
    assert dockerfile_stages["cpu"].base.startswith("python:3.11-slim")
    assert dockerfile_stages["builder"].base == dockerfile_stages["cpu"].base
    assert dockerfile_stages["native"].base == dockerfile_stages["cpu"].base  # its glibc is the image's
    # The gpu image needs no vendor CUDA base: the CUDA libraries come from PyPI wheels. CUDA_IMAGE (the
    # contract's build argument) defaults to the same Python base.
    assert dockerfile_stages["gpu"].base == dockerfile_stages["cpu"].base
    assert dockerfile_stages["gpu-report"].base == "gpu"  # the served gpu image stays torch-free


def _allowed_in_context() -> set[str]:
    """What the .dockerignore allow-list lets into the build context."""
    return {
        line.strip()[1:].rstrip("/")
        for line in (sc.REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("!")
    }


def _context_mounts(inst: sc.Instruction) -> list[str]:
    """Sources of a RUN's bind mounts from the build context (``from=`` mounts are other stages)."""
    sources = []
    for mount in re.findall(r"--mount=(\S+)", inst.args):
        options = dict(item.partition("=")[::2] for item in mount.split(","))
        if options.get("type") == "bind" and "from" not in options:
            sources.append(options.get("source", ".").rstrip("/"))
    return sources


def test_builder_sees_every_package_of_the_wheel(dockerfile_stages: dict[str, sc.Stage]) -> None:
    # The builder bind-mounts the whole context (one layer, no copies), which .dockerignore narrows.
    with (sc.REPO_ROOT / "pyproject.toml").open("rb") as fh:
        includes = tomllib.load(fh)["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    mounts = [source for inst in dockerfile_stages["builder"].all("RUN") for source in _context_mounts(inst)]
    assert mounts == ["."], mounts
    assert packages | {"pyproject.toml", "README.md", "deploy/docker"} <= _allowed_in_context()


def test_dockerignore_lets_the_build_context_through(dockerfile_stages: dict[str, sc.Stage]) -> None:
    # .dockerignore is an allow-list; every local COPY or bind-mount source must be allowed back in.
    allowed = _allowed_in_context()
    for stage in dockerfile_stages.values():
        sources = [
            (inst.line, source)
            for inst in stage.all("COPY")
            if "--from=" not in inst.args
            for source in _copy_sources(inst)
        ]
        sources += [(inst.line, source) for inst in stage.all("RUN") for source in _context_mounts(inst)]
        for line, source in sources:
            if source == ".":
                continue
            assert any(source == a or source.startswith(f"{a}/") for a in allowed), (
                f"Dockerfile:{line} uses {source}, which .dockerignore keeps out"
            )
            assert (sc.REPO_ROOT / source).exists(), f"Dockerfile:{line} uses missing {source}"


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_target(
    target: str, dockerfile_stages: dict[str, sc.Stage], console_scripts: dict[str, str]
) -> None:
    stage = dockerfile_stages[target]
    user = stage.last("USER")
    assert user is not None and user.args.split(":")[0].isdigit() and int(user.args.split(":")[0]) > 0, (
        "runtime images run as a numeric non-root user (so Kubernetes can verify runAsNonRoot)"
    )

    entrypoint = stage.last("ENTRYPOINT")
    assert entrypoint is not None
    command = json.loads(entrypoint.args)  # exec form: a JSON array, so SIGTERM reaches the server
    assert command == ["danet-serve"] and "danet-serve" in console_scripts

    expose = stage.last("EXPOSE")
    assert expose is not None
    assert sorted(int(port) for port in expose.args.split()) == [DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT]

    env = _env(stage)
    assert env["DANET_HTTP_PORT"] == str(DEFAULT_HTTP_PORT)
    assert env["DANET_GRPC_PORT"] == str(DEFAULT_GRPC_PORT)
    assert env["DANET_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_env_names_are_settings(
    target: str, dockerfile_stages: dict[str, sc.Stage], setting_env_names: set[str]
) -> None:
    danet = {name for name in _env(dockerfile_stages[target]) if name.startswith("DANET_")}
    assert danet and danet <= setting_env_names, f"not settings: {sorted(danet - setting_env_names)}"


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_healthcheck_waits_for_warm_up_on_readyz(
    target: str, dockerfile_stages: dict[str, sc.Stage], probe_client
) -> None:
    check = dockerfile_stages[target].last("HEALTHCHECK")
    assert check is not None
    options, _, command = check.args.partition("CMD")
    exec_form = json.loads(command)
    assert exec_form[1] == "/usr/local/bin/danet-healthcheck" and exec_form[-1] == "/readyz"
    assert probe_client.get(exec_form[-1]).status_code == 503  # a real route, not ready before warm-up
    start_period = re.search(r"--start-period=(\S+)", options)
    assert start_period is not None and duration_s(start_period.group(1)) >= 60
    copied = {inst.args.split()[-1] for inst in dockerfile_stages[target].all("COPY")}
    assert exec_form[1] in copied


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_installs_the_wheel_without_torch_or_toolchain(
    target: str, dockerfile_stages: dict[str, sc.Stage]
) -> None:
    runs = " ".join(inst.args for inst in dockerfile_stages[target].all("RUN"))
    assert f"requirements-{target}.txt" in runs
    assert "--no-deps /tmp/wheels/danet_serve-" in runs
    assert f"check_image.py --flavour {target}" in runs  # the build fails when torch or a compiler is there
    assert "from=native,source=/native" in runs and "/tmp/native/libdanet_blockcache.so" in runs
    for forbidden in ("torch", "build-essential", "gcc", "g++", "python3-dev", "curl"):
        assert not re.search(rf"(?<![\w-]){re.escape(forbidden)}(?![\w-])", runs), (
            f"{target} installs {forbidden}"
        )


def test_native_stage_compiles_the_block_cache_the_way_make_does(
    dockerfile_stages: dict[str, sc.Stage],
) -> None:
    runs = " ".join(inst.args for inst in dockerfile_stages["native"].all("RUN"))
    assert "source=server/native" in runs and "sh /src/build.sh /native/libdanet_blockcache.so" in runs
    assert "server/native/build.sh" in (sc.REPO_ROOT / "Makefile").read_text()
    assert "**/*.so" in (sc.REPO_ROOT / ".dockerignore").read_text().splitlines()  # never the host's build


def test_export_target_is_separate_and_runs_danet_export(
    dockerfile_stages: dict[str, sc.Stage], console_scripts: dict[str, str]
) -> None:
    stage = dockerfile_stages["export"]
    entrypoint = stage.last("ENTRYPOINT")
    assert entrypoint is not None and json.loads(entrypoint.args) == ["danet-export"]
    assert "danet-export" in console_scripts
    assert "requirements-export.txt" in " ".join(inst.args for inst in stage.all("RUN"))
    for target in RUNTIME_TARGETS:
        froms = [
            inst.args for inst in dockerfile_stages[target].all("COPY") + dockerfile_stages[target].all("RUN")
        ]
        assert not any("from=export" in args for args in froms)
