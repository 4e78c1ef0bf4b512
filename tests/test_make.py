"""The two commands (`make run`, `make test`), `.ci/run`, and the console scripts promised in CONTRACT.md.

`make -n -B` prints every recipe a fresh clone would run without running any of it, so those checks are
cheap. One test runs the real `make run` on the already-installed venv and asks the server for its model;
the full fresh-clone run is done by hand (docs/deploy.md, "Checking a fresh clone").
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from common.contract import DEFAULT_MODEL_NAME, DEFAULT_ONNX
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACT = REPO_ROOT.parent / "shared" / "CONTRACT.md"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _make_env() -> dict[str, str]:
    """This environment without an enclosing make's flags (pytest may itself run under `make test`)."""
    skip = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    return {k: v for k, v in os.environ.items() if k not in skip and not k.startswith("DANET_")}


def _dry_run(target: str) -> str:
    """What `make TARGET` would execute on a fresh clone (-B: as if nothing had been built yet)."""
    proc = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target],
        cwd=REPO_ROOT,
        env=_make_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def _pyproject() -> dict:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _assert_in_order(output: str, patterns: list[str]) -> None:
    position = 0
    for pattern in patterns:
        match = re.compile(pattern, re.MULTILINE).search(output, position)
        assert match, f"`{pattern}` missing (after position {position}) in:\n{output}"
        position = match.end()


def test_make_run_bootstraps_the_venv_and_starts_the_server() -> None:
    _assert_in_order(
        _dry_run("run"),
        [
            r"^python3? -m venv \.venv$",
            r"^\.venv/bin/pip install .*-e \.$",
            r"^\.venv/bin/danet-serve\s*$",  # no --model: the embedded default model
        ],
    )


def test_make_run_does_not_install_the_export_or_dev_extras() -> None:
    assert "[export" not in _dry_run("run") and "torch" not in _dry_run("run")


@pytest.mark.skipif(not DEFAULT_ONNX.is_file(), reason=f"embedded default model {DEFAULT_ONNX} not built yet")
def test_make_run_serves_the_embedded_default_model(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "make-run.log").open("wb")
    # -o: take the installed venv as it is (a test must not reinstall packages); the recipe itself runs.
    process = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.runtime",
            "-o",
            ".venv/bin/activate",
            "run",
            f"ARGS=--host 127.0.0.1 --http-port {port} --grpc-port -1",
        ],
        cwd=REPO_ROOT,
        env=_make_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: make and the server stop together
    )
    try:
        deadline = time.monotonic() + 240
        ready = False
        while time.monotonic() < deadline and process.poll() is None and not ready:
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            if not ready:
                time.sleep(0.5)
        output = (tmp_path / "make-run.log").read_text(errors="replace")
        assert ready, f"`make run` never became ready (exit {process.poll()}):\n{output[-3000:]}"
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["models"]
        assert [model["name"] for model in models] == [DEFAULT_MODEL_NAME]
        assert ".venv/bin/danet-serve" in output.splitlines()[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_make_test_runs_lint_types_static_checks_and_both_test_passes() -> None:
    packages = [p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    output = _dry_run("test")
    _assert_in_order(
        output,
        [
            r"^python3? -m venv \.venv$",
            r"^\.venv/bin/pip install .*-e '\.\[export,dev,ray\]'$",
            r"^\.venv/bin/ruff check \.$",
            r"^\.venv/bin/ruff format --check \.$",
            r"^\.venv/bin/mypy ",
            r"^\.venv/bin/python -m tests\.static_checks$",
            r"^\.venv/bin/pytest -q$",  # default markers (pyproject addopts)
            r"^\.venv/bin/pytest -q -m load",
        ],
    )
    mypy_line = next(line for line in output.splitlines() if line.startswith(".venv/bin/mypy "))
    # protos holds generated stubs; every hand-written package is type-checked.
    assert set(packages) - {"protos"} <= set(mypy_line.split()[1:])


def test_ci_runs_exactly_make_test() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in script
    commands = [
        line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands[-1] == "make test"


def _contract_commands() -> set[str]:
    """The console scripts in CONTRACT.md's command table (`make ...` rows are Makefile targets)."""
    section = CONTRACT.read_text(encoding="utf-8").split("## Commands", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in section.splitlines():
        match = re.match(r"\|\s*`([^`\s]+)", row)
        if match and not match.group(1).startswith("make"):
            names.add(match.group(1))
    return names


@pytest.mark.skipif(not CONTRACT.is_file(), reason="shared/CONTRACT.md is not beside this checkout")
def test_console_scripts_match_the_contract() -> None:
    assert set(_pyproject()["project"]["scripts"]) == _contract_commands()


@pytest.mark.parametrize("name", sorted(_pyproject()["project"]["scripts"]))
def test_console_script_targets_exist(name: str) -> None:
    # Checked from the source, without importing: export/train pull in torch.
    module, _, function = _pyproject()["project"]["scripts"][name].partition(":")
    path = REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")
    assert path.is_file(), f"{name}: {path} missing"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert function in defined, f"{name}: {module} defines no {function}()"
