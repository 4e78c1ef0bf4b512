"""Peak memory of one full-resolution pass through an exported graph (benchmark script).

    python -m export.memcheck                       # exports DANet-ResNet50-OS8 (random weights)
    python -m export.memcheck --onnx model.onnx     # measures an existing file
    python -m export.memcheck --onnx model.onnx --server   # danet-serve at its defaults instead

Each measurement runs in a fresh subprocess that imports only numpy and onnxruntime, creates the
session, runs ONE pass on a ``height x width`` image and reports its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, session creation included) and the timings. Several
onnxruntime memory settings are compared (CPU arena and memory patterns on/off). The
budget is 1.2 GB peak RSS for 1024x2048 on DANet-ResNet50-OS8. Prints a table and a JSON line.

``--server`` starts ``danet-serve`` at its defaults (no ``DANET_*`` variables) on the file, waits for
``/readyz``, posts ``--requests`` PNG images of ``height x width`` in a row (colour and index
formats alternately) and reports the server process's peak RSS (``VmHWM``) after each.
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


def _status_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return values


def measure_server(onnx_path: Path, height: int, width: int, requests: int = 4) -> dict[str, Any]:
    """Peak RSS of a ``danet-serve`` process at its defaults over ``requests`` full-size requests."""
    import io
    import socket
    import time
    import urllib.request

    import numpy as np
    from PIL import Image

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DANET_")}
    command = [sys.executable, "-m", "server.main", "--model", str(onnx_path), "--host", "127.0.0.1"]
    command += ["--http-port", str(port), "--grpc-port", "-1", "--log-level", "WARNING"]
    server = subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError("danet-serve did not become ready in 10 minutes")
        result: dict[str, Any] = {"height": height, "width": width, "ready": _status_mb(server.pid)}
        pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        result["requests"] = []
        for index in range(requests):
            fmt = ("color", "index")[index % 2]
            request = urllib.request.Request(
                f"{url}/segment?format={fmt}", data=buffer.getvalue(), headers={"Content-Type": "image/png"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=3600) as response:
                status = response.status
                response.read()
            seconds = round(time.perf_counter() - started, 2)
            result["requests"].append(
                {"format": fmt, "status": status, "s": seconds, **_status_mb(server.pid)}
            )
        result["peak_rss_mb"] = max(item["VmHWM"] for item in result["requests"])
        return result
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def export_reference(
    path: Path, depth: int, output_stride: int, num_classes: int, logits: bool, attention: str = "scan"
) -> None:
    """Export a randomly initialised DANet (no verification) for the measurement."""
    import torch

    from export.graph import DEFAULT_OPSET, export_graph, finalize_graph
    from export.metadata import ModelDescription, exporter_version
    from models.config import DANetConfig
    from models.danet import build_danet

    torch.manual_seed(0)
    config = DANetConfig(depth=depth, output_stride=output_stride, num_classes=num_classes, name="memcheck")
    model = build_danet(config).eval()
    graph = export_graph(model, config, attention=attention)
    description = ModelDescription(
        config=config,
        model_name="memcheck",
        source_format="danet-serve",
        source_sha256="",
        precision="fp32",
        exporter_version=exporter_version(DEFAULT_OPSET),
    )
    finalize_graph(graph, logits=logits, props=description.to_props())  # servable as is
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
    parser.add_argument("--server", action="store_true", help="measure danet-serve at its defaults")
    parser.add_argument("--requests", type=int, default=4, help="requests in a row with --server")
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
        if ns.server:
            _say(
                f"measuring danet-serve at its defaults, {ns.requests} requests at {ns.height}x{ns.width} ..."
            )
            served = measure_server(path, ns.height, ns.width, ns.requests)
            _say(json.dumps({"budget_mb": ns.budget_mb, "server": served}))
            return 0 if served["peak_rss_mb"] <= ns.budget_mb else 1
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
