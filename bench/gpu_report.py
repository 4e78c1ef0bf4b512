"""What only a GPU shows: provider really used, fp16 vs fp32, IO-binding latency by batch, peak GPU memory.

    python -m bench.gpu_report --work-dir /tmp/gpu --json gpu.json

Exports DANet-ResNet50-OS8 (random weights, which decide speed only) and the embedded default model
(``--models`` also takes ``danet-r101-os8``) to fp32 and fp16 with ``export.onnx_export``, then for each
file and each provider in ``--providers``:

* the provider onnxruntime really selected (``session.get_providers()[0]``), never the requested one;
* label agreement and max confidence difference of fp16 against fp32 on synthetic scenes;
* latency (p50/p95) and throughput with IO binding (input copied to the device once, outputs bound
  there) at batch 1/4/8 at 512x512, and batch 1 at 1024x2048;
* peak GPU memory of a fresh process running one 1024x2048 image (NVML, polled every 5 ms).

With ``--attention scan,fused`` (the default) every model is also exported with
``danet-export --attention fused`` (the position attention as one ``com.microsoft.MultiHeadAttention``
node) and measured the same way, as ``fp32-fused`` / ``fp16-fused`` rows.

Device time is scarce, so the run is bounded: ``--budget-s`` stops before the next measurement once that
many seconds have passed (the JSON then says where it stopped), and ``--json`` is rewritten after every
row, so a run killed from outside still leaves what it measured. ``--trt-cache DIR`` gives the TensorRT
provider an engine cache and a timing cache in ``DIR`` (a second run reuses the built engines).

Needs the ``export`` extra (torch) for the exports and ``nvidia-ml-py`` for the memory figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.floor import GPU_PROVIDERS, ProviderSpec, make_session, runner_factory, time_sequential
from bench.images import bench_image
from bench.stats import LatencyStats
from common.contract import INPUT_IMAGE, OUTPUT_CONFIDENCE, OUTPUT_LABELS


def fused_exports(checkpoint: Path, output: Path) -> dict[str, Path]:
    """fp32 + fp16 exports of ``checkpoint`` with the fused attention (cached in the work directory)."""
    from export.onnx_export import export_onnx, variant_path
    from models.checkpoints import load_checkpoint

    files = {"fp32-fused": output, "fp16-fused": variant_path(output, "fp16")}
    if not all(path.exists() for path in files.values()):
        export_onnx(load_checkpoint(checkpoint), output, fp16=True, verify=False, attention="fused")
    return files


#: ``--models`` name -> ResNet depth of the randomly initialised DANet (OS8, 19 classes).
RESNET_MODELS = {"danet-r50-os8": 50, "danet-r101-os8": 101}
DEFAULT_MODEL = "danet-synthetic"


def prepare(
    work_dir: Path, names: list[str], attention: tuple[str, ...] = ("scan",)
) -> dict[str, dict[str, Path]]:
    """fp32 + fp16 ONNX files for the named models (R50/R101-OS8 with random weights, the default model)
    via danet-bench's own preparation (same seeded weights, same export cache); ``fused`` in ``attention``
    adds the fused attention exports of the same checkpoints."""
    from bench.prepare import prepare_default, prepare_resnet

    unknown = sorted(set(names) - set(RESNET_MODELS) - {DEFAULT_MODEL})
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(RESNET_MODELS) + [DEFAULT_MODEL]}")
    prepared = []
    for name in names:
        if name in RESNET_MODELS:
            prepared.append(prepare_resnet(work_dir, ["fp32", "fp16"], depth=RESNET_MODELS[name]))
        else:
            prepared.append(prepare_default(work_dir, ["fp32", "fp16"]))
    models = {}
    for model in prepared:
        if "fp16" not in model.variants:
            raise RuntimeError(f"no fp16 variant of {model.name}: {'; '.join(model.notes)}")
        models[model.name] = {"fp32": model.onnx, "fp16": model.variants["fp16"]}
        if "fused" in attention and model.checkpoint is not None:
            models[model.name].update(fused_exports(model.checkpoint, work_dir / f"{model.name}-fused.onnx"))
    return models


def provider_specs(names: list[str], trt_cache: Path | None) -> list[ProviderSpec]:
    """Provider names, with the TensorRT provider given an engine and timing cache in ``trt_cache``."""
    if trt_cache is None:
        return list(names)
    trt_cache.mkdir(parents=True, exist_ok=True)
    cache = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(trt_cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(trt_cache),
    }
    return [(name, dict(cache)) if name == "TensorrtExecutionProvider" else name for name in names]


class Budget:
    """Wall-clock budget of a run: ``spent()`` once ``seconds`` have passed (0 = no limit)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def spent(self) -> bool:
        return self.seconds > 0 and self.elapsed() >= self.seconds


def scenes(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    return [bench_image(size[0], size[1], seed=10_000 + i) for i in range(count)]


def agreement(files: dict[str, Path], providers: list[ProviderSpec], size: tuple[int, int]) -> dict[str, Any]:
    """fp16 against fp32 on the same provider: pixel agreement of labels, max |confidence diff|."""
    s32 = make_session(files["fp32"], providers, 0)
    s16 = make_session(files["fp16"], providers, 0)
    agree, total, conf = 0, 0, 0.0
    nan = False
    for image in scenes(4, size):
        batch = image[None]
        l32, c32 = s32.run([OUTPUT_LABELS, OUTPUT_CONFIDENCE], {INPUT_IMAGE: batch})
        l16, c16 = s16.run([OUTPUT_LABELS, OUTPUT_CONFIDENCE], {INPUT_IMAGE: batch})
        nan = nan or bool(np.isnan(c16.astype(np.float32)).any())
        agree += int((l32 == l16).sum())
        total += l32.size
        conf = max(conf, float(np.abs(c32.astype(np.float32) - c16.astype(np.float32)).max()))
    return {
        "provider_fp32": s32.get_providers()[0],
        "provider_fp16": s16.get_providers()[0],
        "label_agreement": agree / total,
        "max_confidence_diff": conf,
        "fp16_nan": nan,
    }


def latency(
    model: Path, providers: list[ProviderSpec], batch: int, size: tuple[int, int], iterations: int
) -> dict:
    session = make_session(model, providers, 0)
    provider = session.get_providers()[0]
    image = scenes(1, size)[0]
    inputs = np.ascontiguousarray(np.repeat(image[None], batch, axis=0))
    bound = provider in GPU_PROVIDERS
    run = runner_factory(session, inputs, [OUTPUT_LABELS, OUTPUT_CONFIDENCE], io_binding=bound)()
    durations, wall = time_sequential(run, iterations=iterations, warmup=3)
    stats = LatencyStats.from_seconds(durations)
    return {
        "provider": provider,
        "io_binding": bound,
        "batch": batch,
        "size": f"{size[0]}x{size[1]}",
        "p50_ms": stats.p50,
        "p95_ms": stats.p95,
        "images_per_s": batch * len(durations) / wall,
    }


def _peak_gpu_memory_child(model: str, providers: list[ProviderSpec], height: int, width: int) -> None:
    """Child process: run one image, print the NVML peak of this process's GPU memory (MiB)."""
    import os

    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    pid = os.getpid()
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    peak = max(peak, proc.usedGpuMemory)
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    session = make_session(Path(model), providers, 0)
    image = np.zeros((1, height, width, 3), np.uint8)
    image[:, : height // 2] = 200
    t0 = time.perf_counter()
    session.run([OUTPUT_LABELS], {INPUT_IMAGE: image})
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    session.run([OUTPUT_LABELS], {INPUT_IMAGE: image})
    second = time.perf_counter() - t0
    time.sleep(0.05)
    stop.set()
    thread.join()
    sys.stdout.write(
        json.dumps(
            {
                "provider": session.get_providers()[0],
                "peak_gpu_mib": peak / 2**20,
                "first_run_ms": first * 1000,
                "second_run_ms": second * 1000,
            }
        )
        + "\n"
    )


def peak_gpu_memory(model: Path, providers: list[ProviderSpec], size: tuple[int, int]) -> dict[str, Any]:
    code = (
        "import sys, json; from bench.gpu_report import _peak_gpu_memory_child as f; "
        "f(sys.argv[1], [p if isinstance(p, str) else tuple(p) for p in json.loads(sys.argv[2])], "
        "int(sys.argv[3]), int(sys.argv[4]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model), json.dumps(providers), str(size[0]), str(size[1])],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--providers", default="CUDAExecutionProvider,CPUExecutionProvider")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument(
        "--models",
        default="danet-r50-os8,danet-synthetic",
        help=f"comma-separated, of: {', '.join(sorted(RESNET_MODELS) + [DEFAULT_MODEL])}",
    )
    parser.add_argument("--batches", default="1,4,8", help="batch sizes timed at 512x512")
    parser.add_argument("--full-size", default="1024x2048", help="HxW timed at batch 1 and for peak memory")
    parser.add_argument(
        "--attention", default="scan,fused", help="attention exports to measure: scan, fused or both"
    )
    parser.add_argument(
        "--budget-s", type=float, default=0.0, help="stop before the next measurement after this many seconds"
    )
    parser.add_argument("--trt-cache", type=Path, help="TensorRT engine + timing cache directory")
    parser.add_argument("--json", type=Path, help="written after every row")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    budget = Budget(args.budget_s)
    full = tuple(int(v) for v in args.full_size.lower().split("x") if v.isdigit())
    if len(full) != 2:
        parser.error(f"--full-size must be HxW, e.g. 1024x2048, got {args.full_size!r}")
    providers = provider_specs(args.providers.split(","), args.trt_cache)
    result: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "budget_s": args.budget_s,
        "models": {},
    }
    print(json.dumps({k: result[k] for k in ("onnxruntime", "available_providers")}), flush=True)

    def save(stage: str) -> None:
        result["elapsed_s"] = round(budget.elapsed(), 1)
        result["last_stage"] = stage
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))

    def stop_here(stage: str) -> bool:
        if not budget.spent():
            return False
        result["stopped"] = f"budget of {args.budget_s:.0f} s spent before {stage}"
        print(result["stopped"], flush=True)
        save(stage)
        return True

    attention = tuple(args.attention.split(","))
    try:
        models = prepare(args.work_dir, args.models.split(","), attention)
    except ValueError as exc:
        parser.error(str(exc))
    save("prepared")
    for name, files in models.items():
        if stop_here(f"{name} agreement"):
            return 0
        entry: dict[str, Any] = {"fp16_vs_fp32_512": agreement(files, providers, (512, 512)), "latency": []}
        result["models"][name] = entry
        print(name, json.dumps(entry), flush=True)
        save(f"{name} agreement")
        for precision, path in files.items():
            steps = [
                (batch, (512, 512), args.iterations) for batch in (int(b) for b in args.batches.split(","))
            ]
            steps.append((1, (full[0], full[1]), max(5, args.iterations // 3)))
            for batch, size, iterations in steps:
                stage = f"{name} {precision} batch {batch} {size[0]}x{size[1]}"
                if stop_here(stage):
                    return 0
                row = {"precision": precision, **latency(path, providers, batch, size, iterations)}
                entry["latency"].append(row)
                print(name, json.dumps(row), flush=True)
                save(stage)
            stage = f"{name} {precision} peak memory"
            if stop_here(stage):
                return 0
            memory = peak_gpu_memory(path, providers, (full[0], full[1]))
            entry[f"memory_{args.full_size}_{precision}"] = memory
            print(name, precision, json.dumps(memory), flush=True)
            save(stage)
    save("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
