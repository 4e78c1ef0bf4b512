#!/usr/bin/env python3
"""Build-time gate for the runtime images: fail the ``docker build`` when an image breaks its promises.

Checked inside the freshly installed image (see the Dockerfile):
- the embedded default model is installed as package data;
- the serving path imports, and neither torch nor a C compiler is present;
- exactly the flavour's onnxruntime build is installed and offers its execution provider.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import sys
from collections.abc import Sequence
from importlib import metadata

FORBIDDEN_MODULES = ("torch",)
FORBIDDEN_PROGRAMS = ("gcc", "cc", "g++", "clang")
REQUIRED_PROVIDER = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider"}
ONNXRUNTIME_DISTRIBUTION = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def problems(flavour: str) -> list[str]:
    """Every broken promise of the installed image, as one line each (empty = fine)."""
    found: list[str] = []
    for name in FORBIDDEN_MODULES:
        if importlib.util.find_spec(name) is not None:
            found.append(f"{name} is installed; the serving image must not carry it")
    for program in FORBIDDEN_PROGRAMS:
        if shutil.which(program):
            found.append(f"compiler {program!r} is on PATH; runtime images carry no toolchain")

    contract = importlib.import_module("common.contract")
    if not contract.DEFAULT_ONNX.is_file():
        found.append(f"default model missing: {contract.DEFAULT_ONNX} (package data not installed)")

    if importlib.util.find_spec("server.main") is None:
        found.append("server.main (the danet-serve entry point) is not importable")

    # Both distributions install the same ``onnxruntime`` module; having both means one silently wins.
    installed = {name for name in ONNXRUNTIME_DISTRIBUTION.values() if _installed(name)}
    if installed != {ONNXRUNTIME_DISTRIBUTION[flavour]}:
        found.append(
            f"expected only {ONNXRUNTIME_DISTRIBUTION[flavour]} among onnxruntime builds, found {sorted(installed)}"
        )
    ort = importlib.import_module("onnxruntime")
    available = ort.get_available_providers()
    if REQUIRED_PROVIDER[flavour] not in available:
        found.append(f"onnxruntime lacks {REQUIRED_PROVIDER[flavour]} (has {available})")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=sorted(REQUIRED_PROVIDER), required=True)
    args = parser.parse_args(argv)
    found = problems(args.flavour)
    for line in found:
        sys.stderr.write(f"check_image: {line}\n")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
