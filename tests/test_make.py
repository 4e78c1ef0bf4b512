"""The two commands (`make run`, `make test`), `.ci/run`, and the console scripts promised in CONTRACT.md.

`make -n -B` prints every recipe a fresh clone would run without running any of it, so these checks are
cheap; the real fresh-clone run is done by hand (docs/deploy.md, "Checking a fresh clone").
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACT = REPO_ROOT.parent / "shared" / "CONTRACT.md"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _dry_run(target: str) -> str:
    """What `make TARGET` would execute on a fresh clone (-B: as if nothing had been built yet)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target],
        cwd=REPO_ROOT,
        env=env,
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


def test_make_test_runs_lint_types_static_checks_and_both_test_passes() -> None:
    packages = [p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    output = _dry_run("test")
    _assert_in_order(
        output,
        [
            r"^python3? -m venv \.venv$",
            r"^\.venv/bin/pip install .*-e '\.\[export,dev\]'$",
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
