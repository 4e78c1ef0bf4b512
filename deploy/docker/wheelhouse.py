#!/usr/bin/env python3
"""Fill a local package index with everything the image builds install, downloaded on the host.

For machines whose build containers cannot reach PyPI themselves (this project's offline CI: no NAT for
build containers, TLS interception the images do not trust). Users never need it. The host's pip
(with its own configuration, e.g. a local find-links holding torch's CPU wheel) downloads

    the build back end (setuptools, wheel), the builder's ``packaging`` pin, and
    each flavour's requirement list (runtime_requirements.py, read from pyproject.toml)

into ``DIR/<normalised-name>/<files>``: the PEP 503 "simple" layout, so any static HTTP server's directory
listing of DIR is an index. Serve it on the host (``python -m http.server -d DIR -b 127.0.0.1 PORT``) and
build on the host network with ``--build-arg PIP_INDEX_URL=http://127.0.0.1:PORT/``.

    python deploy/docker/wheelhouse.py DIR --flavour cpu [--flavour gpu] [--extra export]

``--flavour gpu`` adds onnxruntime-gpu with NVIDIA's CUDA, cuDNN and cuBLAS wheels (about 1.6 GB).

A stamp of the requirement list makes a second run with the same list return at once.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent.parent / "pyproject.toml"
# The builder stage: `pip install packaging==...` and `pip wheel .` (build isolation fetches the back end).
BUILDER_LINES = ("packaging==24.2", "setuptools>=68", "wheel")
# What the gpu-report target adds to the gpu image besides the export extra (see the Dockerfile).
GPU_REPORT_LINES = ("nvidia-ml-py",)
STAMP = ".requirements"


def _runtime_requirements() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runtime_requirements", HERE / "runtime_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyproject_requires_dist(pyproject: Path = PYPROJECT) -> list[str]:
    """pyproject's dependencies as a wheel's Requires-Dist lines (extras carry an ``extra ==`` marker)."""
    with pyproject.open("rb") as fh:
        project = tomllib.load(fh)["project"]
    lines = list(project["dependencies"])
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for line in requirements:
            req = Requirement(line)
            marker = f"({req.marker}) and extra == '{extra}'" if req.marker else f"extra == '{extra}'"
            req.marker = None
            lines.append(f"{req}; {marker}")
    return lines


def requirement_lines(flavours: Sequence[str], extras: Sequence[str]) -> list[str]:
    """Everything the builds of ``flavours`` (plus the export image when ``extras`` has export) install."""
    select = _runtime_requirements().select_requirements
    requires_dist = pyproject_requires_dist()
    lines = list(BUILDER_LINES)
    for flavour in flavours:
        lines += select(requires_dist, flavour)
    if "gpu" in flavours:
        lines += GPU_REPORT_LINES
    if extras:
        lines += select(requires_dist, "cpu", list(extras))
    return sorted(set(lines))


def project_dir_name(filename: str) -> str:
    """The PEP 503 normalised project name of a wheel or sdist file name."""
    stem = filename.split("-")[0] if filename.endswith(".whl") else filename.rsplit("-", 1)[0]
    return re.sub(r"[-_.]+", "-", stem).lower()


def fill(directory: Path, lines: Sequence[str]) -> Path:
    """Download ``lines`` with their dependencies into ``directory`` (simple-index layout)."""
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    stamp = directory / STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8").startswith(digest):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        downloads = Path(tmp) / "files"
        # Files already here (the CUDA wheels of the gpu image are ~1.6 GB) are offered to pip first, so a
        # changed list downloads only what is new.
        present = [f"--find-links={p}" for p in sorted(directory.iterdir()) if p.is_dir() and p != Path(tmp)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--prefer-binary", *present]
            + ["--dest", str(downloads), "--requirement", str(requirements)],
            check=True,
        )
        for path in downloads.iterdir():
            target = directory / project_dir_name(path.name)
            target.mkdir(exist_ok=True)
            shutil.move(str(path), target / path.name)
    stamp.write_text(f"{digest}\n" + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--flavour", action="append", choices=("cpu", "gpu"), default=[])
    parser.add_argument("--extra", action="append", default=[], help="e.g. export (the export image)")
    args = parser.parse_args(argv)
    fill(args.directory, requirement_lines(args.flavour or ["cpu"], args.extra))
    sys.stdout.write(f"{args.directory}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
