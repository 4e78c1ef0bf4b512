"""Peak memory of one full-resolution pass through an exported graph (benchmark script).

    python -m export.memcheck                       # exports DANet-ResNet50-OS8 (random weights)
    python -m export.memcheck --onnx model.onnx     # measures an existing file

Each measurement runs in a fresh subprocess that imports only numpy and onnxruntime, creates the
session, runs ONE pass on a ``height x width`` image and reports its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, session creation included) and the timings. Several
onnxruntime memory settings are compared (CPU arena and memory patterns on/off). The issue's
budget is 1.2 GB peak RSS for 1024x2048 on DANet-ResNet50-OS8. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: label -> (enable_cpu_mem_arena, enable_mem_pattern, environment of the child process).
#: ``MALLOC_MMAP_THRESHOLD_`` pins glibc's mmap threshold (it otherwise grows after the first large
#: free), so that large freed blocks go back to the OS instead of staying in the heap.
SETTINGS: dict[str, tuple[bool, bool, dict[str, str]]] = {
    "default": (True, True, {}),
    "no-arena": (False, True, {}),
    "no-arena-no-pattern": (False, False, {}),
    "no-arena+mmap": (False, True, {"MALLOC_MMAP_THRESHOLD_": "131072"}),
}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _measure(onnx_path: str, height: int, width: int, threads: int, arena: bool, pattern: bool) -> None:
    """Child process body: one session, one pass, one JSON line on stdout."""
    import resource
    import time

    import numpy as np
    import onnxruntime as ort

    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = pattern
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    start = time.perf_counter()
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - start
    after_load_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(1, height, width, 3), dtype=np.uint8)
    start = time.perf_counter()
    outputs = session.run(None, {session.get_inputs()[0].name: image})
    run_s = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "height": height,
        "width": width,
        "threads": threads,
        "arena": arena,
        "mem_pattern": pattern,
        "baseline_rss_mb": round(baseline_kb / 1024, 1),
        "after_load_rss_mb": round(after_load_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "load_s": round(load_s, 2),
        "run_s": round(run_s, 2),
        "outputs": {
            out.name: list(value.shape) for out, value in zip(session.get_outputs(), outputs, strict=True)
        },
    }
    sys.stdout.write(json.dumps(result) + "\n")


def measure(
    onnx_path: Path,
    height: int,
    width: int,
    *,
    threads: int = 2,
    arena: bool = True,
    pattern: bool = True,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run :func:`_measure` in a fresh interpreter (with ``env`` added) and return its report."""
    command = [
        sys.executable,
        "-m",
        "export.memcheck",
        "--child",
        str(onnx_path),
        str(height),
        str(width),
        str(threads),
        str(int(arena)),
        str(int(pattern)),
    ]
    environment = {**os.environ, **(env or {})}
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if completed.returncode != 0:
        raise RuntimeError(f"measurement failed (exit {completed.returncode}): {completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def export_reference(
    path: Path, depth: int, output_stride: int, num_classes: int, logits: bool, attention: str = "scan"
) -> None:
    """Export a randomly initialised DANet (no verification) for the measurement."""
    import torch

    from export.graph import export_graph, finalize_graph
    from models.config import DANetConfig
    from models.danet import build_danet

    torch.manual_seed(0)
    config = DANetConfig(depth=depth, output_stride=output_stride, num_classes=num_classes, name="memcheck")
    model = build_danet(config).eval()
    graph = export_graph(model, config, attention=attention)
    finalize_graph(graph, logits=logits, props={})
    import onnx

    onnx.save(graph, str(path))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--child":
        child = args[1:7]
        _measure(child[0], int(child[1]), int(child[2]), int(child[3]), child[4] == "1", child[5] == "1")
        return 0
    parser = argparse.ArgumentParser(prog="python -m export.memcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="measure this file instead of exporting one")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--output-stride", type=int, default=8, choices=(8, 16))
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--logits", action="store_true", help="export with the logits output")
    parser.add_argument("--attention", choices=("scan", "fused"), default="scan", help="PAM lowering")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--settings",
        default="default,no-arena",
        help=f"comma-separated subset of {','.join(SETTINGS)} or 'all'",
    )
    parser.add_argument("--budget-mb", type=float, default=1200.0, help="exit 1 above this peak RSS")
    ns = parser.parse_args(args)
    names = list(SETTINGS) if ns.settings == "all" else ns.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")

    with tempfile.TemporaryDirectory(prefix="danet-memcheck-") as tmp:
        path = ns.onnx
        if path is None:
            path = Path(tmp) / "reference.onnx"
            _say(
                f"exporting DANet-ResNet{ns.depth}-OS{ns.output_stride} (random weights, {ns.attention}) ..."
            )
            export_reference(path, ns.depth, ns.output_stride, ns.num_classes, ns.logits, ns.attention)
        results = []
        for name in names:
            arena, pattern, env = SETTINGS[name]
            _say(f"measuring {name} at {ns.height}x{ns.width} ...")
            result = measure(
                path, ns.height, ns.width, threads=ns.threads, arena=arena, pattern=pattern, env=env
            )
            result["settings"] = name
            results.append(result)

    _say(f"{'settings':<22}{'peak RSS MB':>12}{'after load MB':>15}{'load s':>8}{'run s':>8}")
    for result in results:
        _say(
            f"{result['settings']:<22}{result['peak_rss_mb']:>12}{result['after_load_rss_mb']:>15}"
            f"{result['load_s']:>8}{result['run_s']:>8}"
        )
    _say(json.dumps({"budget_mb": ns.budget_mb, "results": results}))
    best = min(result["peak_rss_mb"] for result in results)
    return 0 if best <= ns.budget_mb else 1


if __name__ == "__main__":
    sys.exit(main())
