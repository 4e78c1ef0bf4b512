#!/usr/bin/env python3
"""Build-time gate for the runtime images: fail the ``docker build`` when an image breaks its promises.

Checked inside the freshly installed image (see the Dockerfile):
- the embedded default model is installed as package data;
- the serving path imports, and neither torch nor a C compiler is present;
- exactly the flavour's onnxruntime build is installed and offers its execution provider;
- danet-serve's block cache is installed where the server looks for it, its default settings preload it,
  and preloaded it loads and keeps a freed 16 MiB block;
- gpu: every library the CUDA provider (and cuDNN, which it loads at run time; TensorRT's provider when
  its libraries are installed) links resolves in the image, except the driver's ``libcuda.so.1``, which
  the NVIDIA Container Toolkit mounts from the host. ``--libraries`` prints what ldd resolved.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

FORBIDDEN_MODULES = ("torch",)
FORBIDDEN_PROGRAMS = ("gcc", "cc", "g++", "clang")
REQUIRED_PROVIDER = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider"}
ONNXRUNTIME_DISTRIBUTION = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}
#: Provided by the host's driver at run time (the container toolkit mounts it), never by the image.
DRIVER_LIBRARIES = frozenset({"libcuda.so.1"})
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(.*?)(?:\s+\(0x[0-9a-f]+\))?$")


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
    found += block_cache_problems()
    ort = importlib.import_module("onnxruntime")
    available = ort.get_available_providers()
    if REQUIRED_PROVIDER[flavour] not in available:
        found.append(f"onnxruntime lacks {REQUIRED_PROVIDER[flavour]} (has {available})")
    if flavour == "gpu":
        try:
            libraries = gpu_libraries()
        except (OSError, RuntimeError) as exc:
            found.append(f"cannot check the GPU libraries: {exc}")
            libraries = {}
        for library, links in libraries.items():
            for name, path in links.items():
                if path is not None or name in DRIVER_LIBRARIES:
                    continue
                found.append(
                    f"{library} is missing (its wheel is not installed)"
                    if Path(library).name == name
                    else f"{library} links {name}, which is not found (missing wheel or ld.so.conf.d entry)"
                )
    return found


#: Run under the default preload plan's environment: the block cache must be mapped and keep a freed 16 MiB block for reuse.
_BLOCK_CACHE_PROBE = """
import ctypes, json
from server import allocator
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free(ctypes.c_void_p(libc.malloc(16 << 20)))
print(json.dumps({"loaded": allocator.block_cache_loaded(), "stats": allocator.block_cache_stats()}))
"""


def block_cache_problems() -> list[str]:
    """The block cache: installed, in the default preload plan, and working when preloaded."""
    allocator = importlib.import_module("server.allocator")
    settings = importlib.import_module("server.settings").Settings()
    library = allocator.BLOCK_CACHE
    if not library.is_file():
        return [f"block cache missing: {library} (the native stage's library was not installed)"]
    plan = allocator.preload_plan(settings, {}, loaded=None, block_cache=library)
    if str(library) not in plan.env.get("LD_PRELOAD", ""):
        return [f"the default settings do not preload the block cache ({plan.reason})"]
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_CACHE_PROBE],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **plan.env},  # what danet-serve re-executes itself with
    )
    try:
        probe = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return [f"block cache probe exited {proc.returncode}: {proc.stderr.strip()[-300:]}"]
    stats = probe["stats"] or {}
    if not probe["loaded"] or stats.get("kept") != 16 << 20:
        return [f"block cache preloaded but not working: {probe} {proc.stderr.strip()[-300:]}"]
    return []


def gpu_libraries() -> dict[str, dict[str, str | None]]:
    """{shared library: {linked name: resolved path or None}} for the GPU provider libraries, per ldd.

    Checked: onnxruntime's CUDA provider, cuDNN's libraries (dlopened by name at run time, so their own
    links count too), and the TensorRT provider when TensorRT's libraries are installed.
    """
    capi = Path(importlib.import_module("onnxruntime").__file__).parent / "capi"
    purelib = Path(sysconfig.get_path("purelib"))
    cudnn = purelib / "nvidia" / "cudnn" / "lib"
    libraries = [capi / "libonnxruntime_providers_cuda.so", cudnn / "libcudnn.so.9"]
    libraries += sorted(set(cudnn.glob("libcudnn*.so*")) - set(libraries))
    if (purelib / "tensorrt_libs").is_dir():
        libraries.append(capi / "libonnxruntime_providers_tensorrt.so")
    return {str(library): ldd(library) for library in libraries}


def ldd(library: Path) -> dict[str, str | None]:
    """{linked name: resolved path, or None when not found} as ``ldd`` reports it.

    A missing file is reported as itself not found; ldd failing or naming nothing raises RuntimeError,
    so the gate cannot pass by not looking.
    """
    if not library.is_file():
        return {library.name: None}
    proc = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False)
    links: dict[str, str | None] = {}
    for line in proc.stdout.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            name, target = match.groups()
            links[name] = None if target == "not found" else target
    if proc.returncode != 0 or not links:
        raise RuntimeError(f"ldd {library} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return links


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=sorted(REQUIRED_PROVIDER), required=True)
    parser.add_argument(
        "--libraries", action="store_true", help="gpu: print what ldd resolved for each library, as JSON"
    )
    args = parser.parse_args(argv)
    if args.libraries:
        sys.stdout.write(json.dumps(gpu_libraries(), indent=1) + "\n")
    found = problems(args.flavour)
    for line in found:
        sys.stderr.write(f"check_image: {line}\n")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
