"""``danet-bench``: the floor, HTTP, gRPC, PyTorch eager and int8/fp16 variants, measured in one run.

    danet-bench                                   # default model, 512x512 and 1024x2048
    danet-bench --arch r50 --sizes 512x512 --iterations 3 --concurrency 1,4
    danet-bench --device cuda --sizes 1024x2048   # CUDAExecutionProvider, IO binding for the floor
    danet-bench --json bench.json --markdown bench.md

Order of work: prepare every model (exports run in a separate process), then for each model and size
the in-process measurements (each in its own fresh process, for a clean peak RSS), then one real
``danet-serve`` subprocess on free loopback ports for HTTP and gRPC. The table goes to stdout, progress
to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine, report
from bench.clients import GrpcSegmenter, HttpSegmenter, LoadResult, run_closed_loop
from bench.floor import FloorMeasurement, measure_floor
from bench.images import bench_image, decode, encode
from bench.isolate import run_isolated
from bench.prepare import (
    PRECISIONS,
    PreparedModel,
    prepare_default,
    prepare_explicit,
    prepare_r50,
    prepare_tiny,
)
from bench.report import Row
from bench.server_proc import ServerProcess
from bench.stats import LatencyStats

logger = logging.getLogger("danet-bench")

DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        dims = part.strip().lower().split("x")
        if len(dims) == 1:
            dims = dims * 2
        if len(dims) != 2 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise argparse.ArgumentTypeError(f"sizes are HEIGHTxWIDTH, comma-separated; got {part!r}")
        sizes.append((int(dims[0]), int(dims[1])))
    return sizes


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _precisions(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PRECISIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"precisions are {', '.join(PRECISIONS)}; got {bad}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danet-bench",
        description="Measure danet-serve against the floor (onnxruntime in-process) in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = parser.add_argument_group("what to measure")
    what.add_argument(
        "--arch",
        choices=["default", "r50", "tiny"],
        default="default",
        help="default: the embedded default model; r50: DANet-ResNet50-OS8 with random weights, exported "
        "on the fly; tiny: a small conv net (harness check)",
    )
    what.add_argument("--model", type=Path, help="an ONNX file to measure instead of --arch")
    what.add_argument(
        "--checkpoint", type=Path, help="with --model: its checkpoint, for the PyTorch eager row"
    )
    what.add_argument("--int8-model", type=Path, help="with --model: its int8 variant")
    what.add_argument("--fp16-model", type=Path, help="with --model: its fp16 variant")
    what.add_argument("--sizes", type=_sizes, default=_sizes("512x512,1024x2048"), help="HxW list")
    what.add_argument("--precisions", type=_precisions, default=list(PRECISIONS), help="fp32,int8,fp16")
    what.add_argument("--seed", type=int, default=0, help="random weights (r50) and input image seed")
    how = parser.add_argument_group("how")
    how.add_argument("--iterations", type=int, default=10, help="timed sequential calls per path and size")
    how.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    how.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="throughput concurrency levels")
    how.add_argument(
        "--concurrency-sizes",
        type=_sizes,
        help="run the concurrency > 1 throughput loops only at these sizes (default: every size)",
    )
    how.add_argument("--rounds", type=int, default=2, help="calls per client in each throughput run")
    how.add_argument(
        "--threads", type=int, default=0, help="intra-op threads everywhere (0 = all usable cores)"
    )
    how.add_argument("--device", choices=sorted(DEVICES), default="cpu", help="shortcut for --providers")
    how.add_argument("--providers", help="onnxruntime providers, comma-separated (overrides --device)")
    how.add_argument(
        "--http-format", default="color", choices=["color", "index"], help="POST /segment format"
    )
    how.add_argument("--http-upload", default="multipart", choices=["multipart", "raw"], help="request body")
    skip = parser.add_argument_group("skip parts (for short runs)")
    skip.add_argument("--skip-http", action="store_true")
    skip.add_argument("--skip-grpc", action="store_true")
    skip.add_argument("--skip-eager", action="store_true")
    skip.add_argument("--skip-server", action="store_true", help="both HTTP and gRPC")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the full results as JSON here")
    out.add_argument("--markdown", type=Path, help="also write the markdown table here")
    out.add_argument("--work-dir", type=Path, help="exports cache (default: ~/.cache/danet-serve/bench)")
    out.add_argument("--rebuild", action="store_true", help="re-export cached models")
    out.add_argument("-v", "--verbose", action="store_true")
    return parser


@dataclass
class Plan:
    providers: list[str]
    threads: int
    sizes: list[tuple[int, int]]
    precisions: list[str]
    iterations: int
    warmup: int
    concurrency: list[int]
    concurrency_sizes: list[tuple[int, int]] | None
    rounds: int
    device: str
    http_format: str
    http_upload: str

    def levels(self, size: tuple[int, int]) -> list[int]:
        """Concurrency levels measured at ``size``."""
        if self.concurrency_sizes is None or size in self.concurrency_sizes:
            return self.concurrency
        return [1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "providers": self.providers,
            "threads": self.threads,
            "sizes": [report.size_text(s) for s in self.sizes],
            "precisions": self.precisions,
            "iterations": self.iterations,
            "warmup": self.warmup,
            "concurrency": self.concurrency,
            "concurrency_sizes": None
            if self.concurrency_sizes is None
            else [report.size_text(s) for s in self.concurrency_sizes],
            "rounds": self.rounds,
            "device": self.device,
            "http_format": self.http_format,
            "http_upload": self.http_upload,
        }


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


# --- preparation ---------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, plan: Plan, work_dir: Path) -> PreparedModel:
    if args.model is not None:
        return prepare_explicit(
            args.model, args.checkpoint, args.int8_model, args.fp16_model, plan.precisions
        )
    if args.arch == "tiny":
        return prepare_tiny(work_dir)
    if args.arch == "r50":
        logger.info("preparing DANet-ResNet50-OS8 (random weights, seed %d) in %s", args.seed, work_dir)
        prepared, _ = run_isolated(
            prepare_r50, work_dir, plan.precisions, seed=args.seed, rebuild=args.rebuild
        )
        return prepared
    prepared, _ = run_isolated(prepare_default, work_dir, plan.precisions, rebuild=args.rebuild)
    return prepared


# --- in-process measurements ---------------------------------------------------------------------------


def _row_from(
    model: str, size: tuple[int, int], path: str, precision: str, m: FloorMeasurement, peak: int
) -> Row:
    return Row(
        model=model,
        size=size,
        path=path,
        precision=precision,
        provider=m.provider,
        latency=LatencyStats.from_seconds(m.durations_s),
        throughput=dict(m.throughput_rps),
        peak_rss_bytes=peak,
    )


def measure_in_process(
    model: PreparedModel, size: tuple[int, int], image: np.ndarray, plan: Plan, skip_eager: bool
) -> list[Row]:
    rows: list[Row] = []
    common = {
        "iterations": plan.iterations,
        "warmup": plan.warmup,
        "concurrency": plan.levels(size),
        "rounds": plan.rounds,
    }
    logger.info("[%s %s] floor (onnxruntime fp32, %s)", model.name, report.size_text(size), plan.providers[0])
    try:
        floor, peak = run_isolated(
            measure_floor, model.onnx, image, providers=plan.providers, threads=plan.threads, **common
        )
    except Exception as exc:
        logger.error("floor failed: %s", _one_line(exc))
        return [Row(model.name, size, report.FLOOR, status="error", note=_one_line(exc))]
    rows.append(_row_from(model.name, size, report.FLOOR, "fp32", floor, peak))

    for precision in plan.precisions:
        if precision == "fp32":
            continue
        path = f"floor-{precision}"
        variant = model.variants.get(precision)
        if variant is None:
            note = next((n for n in model.notes if precision in n), f"no {precision} variant")
            rows.append(Row(model.name, size, path, precision, status="skipped", note=note))
            continue
        logger.info("[%s %s] onnxruntime %s", model.name, report.size_text(size), precision)
        try:
            m, peak = run_isolated(
                measure_floor, variant, image, providers=plan.providers, threads=plan.threads, **common
            )
        except Exception as exc:
            rows.append(Row(model.name, size, path, precision, status="error", note=_one_line(exc)))
            continue
        row = _row_from(model.name, size, path, precision, m, peak)
        row.agreement = float(np.mean(m.labels == floor.labels))
        rows.append(row)

    if skip_eager:
        rows.append(Row(model.name, size, report.EAGER, status="skipped", note="--skip-eager"))
    elif model.checkpoint is None:
        note = next((n for n in model.notes if "eager" in n or "checkpoint" in n), "no checkpoint")
        rows.append(Row(model.name, size, report.EAGER, status="skipped", note=note))
    else:
        logger.info("[%s %s] PyTorch eager", model.name, report.size_text(size))
        try:
            from bench.eager import measure_eager

            eager_device = "cuda" if plan.device in ("cuda", "tensorrt") else "cpu"
            m, peak = run_isolated(
                measure_eager, model.checkpoint, image, threads=plan.threads, device=eager_device, **common
            )
        except ImportError as exc:
            rows.append(
                Row(model.name, size, report.EAGER, status="skipped", note=f"torch not installed ({exc})")
            )
        except Exception as exc:
            rows.append(Row(model.name, size, report.EAGER, status="error", note=_one_line(exc)))
        else:
            row = _row_from(model.name, size, report.EAGER, "fp32", m, peak)
            row.agreement = float(np.mean(m.labels == floor.labels))
            rows.append(row)
    return rows


# --- through the server --------------------------------------------------------------------------------


def server_env(plan: Plan) -> dict[str, str]:
    longest = max(max(s) for s in plan.sizes)
    return {
        "DANET_PROVIDERS": ",".join(plan.providers),
        "DANET_INTRA_OP_THREADS": str(plan.threads),
        "DANET_MAX_QUEUE": str(max(64, 4 * max(plan.concurrency))),
        "DANET_REQUEST_TIMEOUT_S": "7200",
        "DANET_WARMUP_SIZES": ",".join(report.size_text(s) for s in plan.sizes),
        "DANET_MAX_INFERENCE_SIZE": str(max(2048, longest)),
        "DANET_MAX_UPLOAD_BYTES": str(256 * 1024 * 1024),
        "DANET_ACCESS_LOG": "false",
        "DANET_LOG_LEVEL": "WARNING",
    }


async def _drive(client: Any, plan: Plan, size: tuple[int, int]) -> tuple[LoadResult, dict[int, float]]:
    """Warm-up, then ``iterations`` sequential calls (latency), then a closed loop per concurrency."""
    for _ in range(plan.warmup):
        await client()
    sequential = await run_closed_loop(client, concurrency=1, total=plan.iterations)
    throughput = {1: sequential.throughput_rps}
    for c in plan.levels(size):
        if c > 1:
            result = await run_closed_loop(client, concurrency=c, total=c * plan.rounds)
            if result.failures:
                raise RuntimeError(
                    f"{len(result.failures)} failed calls at concurrency {c}: {result.failures[0]}"
                )
            throughput[c] = result.throughput_rps
    return sequential, throughput


async def _http_path(
    server: ServerProcess, data: bytes, size: tuple[int, int], plan: Plan
) -> tuple[LoadResult, dict[int, float], str]:
    params = {"format": plan.http_format}
    async with HttpSegmenter(
        server.http_url,
        data,
        params=params,
        upload=plan.http_upload,
        max_connections=max(plan.concurrency) + 4,
    ) as client:
        first = await client.request()
        if first.status_code != 200:
            raise RuntimeError(f"POST /segment answered {first.status_code}: {first.text[:300]}")
        answer = decode(first.content)
        if answer.shape[:2] != size:
            raise RuntimeError(f"POST /segment returned a {answer.shape[:2]} map for a {size} image")
        provider = first.headers.get("x-danet-provider", "")
        sequential, throughput = await _drive(client, plan, size)
    return sequential, throughput, provider


async def _grpc_path(
    server: ServerProcess, data: bytes, size: tuple[int, int], plan: Plan
) -> tuple[LoadResult, dict[int, float], str]:
    output = "COLOR" if plan.http_format == "color" else "INDEX"
    async with GrpcSegmenter(server.grpc_target, data, output=output) as client:
        reply = await client.request()
        if (reply.height, reply.width) != size:
            raise RuntimeError(f"Segment returned {reply.height}x{reply.width} for a {size} image")
        sequential, throughput = await _drive(client, plan, size)
    return sequential, throughput, str(reply.provider)


def measure_server(
    model: PreparedModel, images: dict[tuple[int, int], bytes], plan: Plan, args: argparse.Namespace
) -> list[Row]:
    paths = [
        p for p, skipped in ((report.HTTP, args.skip_http), (report.GRPC, args.skip_grpc)) if not skipped
    ]
    rows: list[Row] = []
    if not paths:
        return rows
    logger.info("[%s] starting danet-serve (%s)", model.name, ", ".join(plan.providers))
    try:
        server = ServerProcess(
            [model.onnx], env=server_env(plan), grpc=report.GRPC in paths, ready_timeout_s=1800
        )
        server.start()
    except Exception as exc:
        note = _one_line(exc)
        logger.error("danet-serve did not start: %s", note)
        return [Row(model.name, size, path, status="error", note=note) for size in images for path in paths]
    try:
        for size, data in images.items():
            for path in paths:
                logger.info("[%s %s] %s", model.name, report.size_text(size), report.PATH_LABELS[path])
                reset = server.reset_peak()
                runner = _http_path if path == report.HTTP else _grpc_path
                try:
                    sequential, throughput, provider = asyncio.run(runner(server, data, size, plan))
                except Exception as exc:
                    rows.append(Row(model.name, size, path, status="error", note=_one_line(exc)))
                    continue
                rows.append(
                    Row(
                        model=model.name,
                        size=size,
                        path=path,
                        provider=provider,
                        latency=sequential.latency(),
                        throughput=throughput,
                        peak_rss_bytes=server.peak_rss_bytes(),
                        note="" if reset else "peak RSS cumulative over the server's life",
                    )
                )
    finally:
        code = server.stop()
        if code != 0:
            logger.warning("danet-serve exited with %s:\n%s", code, server.log_tail(20))
    return rows


# --- main ----------------------------------------------------------------------------------------------


def run(
    args: argparse.Namespace,
) -> tuple[list[Row], list[report.Target], dict[str, Any], Plan, PreparedModel]:
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else DEVICES[args.device]
    plan = Plan(
        providers=providers,
        threads=args.threads or _usable_cores(),
        sizes=args.sizes,
        precisions=args.precisions if "fp32" in args.precisions else ["fp32", *args.precisions],
        iterations=max(1, args.iterations),
        warmup=max(0, args.warmup),
        concurrency=sorted(set(args.concurrency)),
        concurrency_sizes=args.concurrency_sizes,
        rounds=max(1, args.rounds),
        device=args.device if not args.providers else "custom",
        http_format=args.http_format,
        http_upload=args.http_upload,
    )
    work_dir = (
        args.work_dir
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "danet-serve" / "bench"
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    described = machine.describe()
    model = prepare(args, plan, work_dir)
    for note in model.notes:
        logger.warning("%s: %s", model.name, note)

    rows: list[Row] = []
    encoded: dict[tuple[int, int], bytes] = {}
    for size in plan.sizes:
        image = bench_image(*size, seed=args.seed)
        encoded[size] = encode(image)
        rows += measure_in_process(model, size, image, plan, args.skip_eager)
    if not args.skip_server:
        rows += measure_server(model, encoded, plan, args)
    order = {
        p: i
        for i, p in enumerate(
            [report.FLOOR, "floor-int8", "floor-fp16", report.EAGER, report.HTTP, report.GRPC]
        )
    }
    rows.sort(key=lambda r: (r.size[0] * r.size[1], order.get(r.path, 99)))
    report.compute_ratios(rows)
    return rows, report.evaluate_targets(rows), described, plan, model


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    try:
        rows, targets, described, plan, model = run(args)
    except FileNotFoundError as exc:
        print(f"danet-bench: {exc}", file=sys.stderr)
        return 2
    text = report.markdown(rows, targets, described, plan.to_dict())
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        document = report.to_json(rows, targets, described, plan.to_dict(), [model.to_dict()])
        document["elapsed_s"] = round(time.perf_counter() - t0, 1)
        report.write_json(args.json, document)
        logger.info("wrote %s", args.json)
    errors = [r for r in rows if r.status == "error"]
    for r in errors:
        logger.error("%s %s %s failed: %s", r.model, report.size_text(r.size), r.label, r.note)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
