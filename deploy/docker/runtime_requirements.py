#!/usr/bin/env python3
"""Print the requirement list one image flavour installs next to the danet-serve wheel.

pyproject.toml declares ``onnxruntime-gpu`` on Linux x86_64 (it falls back to the CPU provider), which is
right for a workstation but wrong for a slim CPU image: the GPU build is several times larger. The images
therefore install the wheel with ``--no-deps`` and take their dependency list from this script, which reads
the wheel's own ``Requires-Dist`` (so pyproject.toml stays the single source) and swaps the onnxruntime
distribution for the flavour:

    cpu  -> onnxruntime                   (python:3.11-slim runtime, and the export image)
    gpu  -> onnxruntime-gpu[cuda,cudnn]   (the same base; CUDA 13 + cuDNN 9 from PyPI) + cuBLAS

The gpu image gets its CUDA libraries from NVIDIA's PyPI wheels, not from a CUDA base image: onnxruntime-gpu's
``cuda`` and ``cudnn`` extras (CUDA runtime, NVRTC, cuFFT, cuRAND, cuDNN) plus cuBLAS, which its CUDA provider
links (``libcublas.so.13``, ``libcublasLt.so.13``) but no extra declares. The CUDA major of ``GPU_LIBRARIES``
must be the one onnxruntime-gpu was built for; check_image.py fails the build when a linked library is missing.

``--extra export`` adds that extra's requirements (torch, onnx, ...) for the one-shot export image.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Iterable, Sequence
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import Requirement

ONNXRUNTIME_BY_FLAVOUR = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}
#: onnxruntime extras each flavour installs: the CUDA and cuDNN wheels for the gpu image.
ONNXRUNTIME_EXTRAS = {"cpu": (), "gpu": ("cuda", "cudnn")}
#: Libraries the flavour needs next to onnxruntime that no onnxruntime extra declares.
GPU_LIBRARIES = ("nvidia-cublas~=13.0",)
EXTRA_LIBRARIES = {"cpu": (), "gpu": GPU_LIBRARIES}
_ONNXRUNTIME_NAMES = frozenset(ONNXRUNTIME_BY_FLAVOUR.values())


def select_requirements(requires_dist: Iterable[str], flavour: str, extras: Sequence[str] = ()) -> list[str]:
    """Requirements for ``flavour`` from ``Requires-Dist`` lines, with exactly one onnxruntime distribution.

    Lines whose marker is false for the base install plus ``extras`` (other extras, other platforms) are
    dropped; every onnxruntime variant becomes the flavour's distribution with the same version specifier.
    """
    if flavour not in ONNXRUNTIME_BY_FLAVOUR:
        raise ValueError(f"flavour must be one of {sorted(ONNXRUNTIME_BY_FLAVOUR)}, got {flavour!r}")
    wanted = ONNXRUNTIME_BY_FLAVOUR[flavour]
    environments = [{"extra": extra} for extra in ("", *extras)]
    selected: list[str] = []
    onnxruntime: list[Requirement] = []
    for line in requires_dist:
        req = Requirement(line)
        if req.name.lower() in _ONNXRUNTIME_NAMES:
            # The platform marker only chose between the two builds; the flavour decides here instead.
            onnxruntime.append(req)
            continue
        if req.marker is not None and not any(req.marker.evaluate(env) for env in environments):
            continue
        req.marker = None
        selected.append(str(req))
    if not onnxruntime:
        raise ValueError("the package declares no onnxruntime dependency; nothing to swap")
    # Keep the version specifier declared for the flavour's own distribution when there is one.
    chosen = next((req for req in onnxruntime if req.name.lower() == wanted), onnxruntime[0])
    chosen.name, chosen.marker = wanted, None
    chosen.extras = set(ONNXRUNTIME_EXTRAS[flavour])
    return [str(chosen), *EXTRA_LIBRARIES[flavour], *selected]


def wheel_requires_dist(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a built wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{wheel}: expected one .dist-info/METADATA, found {names}")
        metadata = HeaderParser().parsestr(archive.read(names[0]).decode("utf-8"))
    return metadata.get_all("Requires-Dist") or []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the built danet-serve wheel")
    parser.add_argument("--flavour", choices=sorted(ONNXRUNTIME_BY_FLAVOUR), required=True)
    parser.add_argument("--extra", action="append", default=[], help="also include this extra's requirements")
    args = parser.parse_args(argv)
    lines = select_requirements(wheel_requires_dist(args.wheel), args.flavour, args.extra)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
