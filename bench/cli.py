"""``danet-bench``: the floor, HTTP, gRPC, PyTorch eager and int8/fp16 variants, measured in one run.

    danet-bench                                   # default model, 512x512 and 1024x2048
    danet-bench --arch r50 --sizes 512x512 --iterations 3 --concurrency 1,4
    danet-bench --device cuda --sizes 1024x2048   # CUDAExecutionProvider, IO binding for the floor
    danet-bench --json bench.json --markdown bench.md

Prepares the model (exports run in a separate process), starts one real ``danet-serve`` on free
loopback ports, then measures every path interleaved call by call (see :mod:`bench.runner`). The
table goes to stdout, progress to stderr; exit status 1 when a row failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.images import IMAGE_KINDS
from bench.isolate import run_isolated
from bench.peers import PEERS
from bench.prepare import (
    PRECISIONS,
    PreparedModel,
    prepare_default,
    prepare_explicit,
    prepare_resnet,
    prepare_tiny,
)
from bench.report import Row
from bench.runner import Plan, run_benchmark

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


def _image_kinds(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in IMAGE_KINDS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"test images are {', '.join(IMAGE_KINDS)}; got {text!r}")
    return list(dict.fromkeys(values))


def _peer_kinds(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"peers are {', '.join(PEERS)}; got {bad}")
    return list(dict.fromkeys(values))


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
        choices=["default", "r50", "r101", "tiny"],
        default="default",
        help="default: the embedded default model; r50 / r101: DANet-ResNet50/101-OS8 with random weights "
        "and batch-norm statistics calibrated on scene images, exported on the fly; tiny: a small conv "
        "net (harness check)",
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
    how.add_argument(
        "--order-seed",
        type=int,
        help="seed of each round's shuffled path order (default: drawn per run and written to the JSON, "
        "so runs do not all put every path in the same slots; pass it to repeat a run's order)",
    )
    how.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    how.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="throughput concurrency levels")
    how.add_argument(
        "--concurrency-sizes",
        type=_sizes,
        help="run the concurrency > 1 throughput loops only at these sizes (default: every size)",
    )
    how.add_argument("--rounds", type=int, default=2, help="throughput bursts per path and concurrency")
    how.add_argument(
        "--threads", type=int, default=0, help="intra-op threads everywhere (0 = all usable cores)"
    )
    how.add_argument(
        "--settle-ms",
        type=float,
        default=100.0,
        help="idle time before each timed call (lets the previous path's spinning threads go quiet)",
    )
    how.add_argument("--device", choices=sorted(DEVICES), default="cpu", help="shortcut for --providers")
    how.add_argument("--providers", help="onnxruntime providers, comma-separated (overrides --device)")
    how.add_argument(
        "--http-format", default="color", choices=["color", "index"], help="POST /segment format"
    )
    how.add_argument("--http-upload", default="multipart", choices=["multipart", "raw"], help="request body")
    how.add_argument(
        "--images",
        type=_image_kinds,
        default=["scene"],
        help="test images, comma-separated: scene (photo-like street scene), noise (uniform random pixels)",
    )
    how.add_argument(
        "--upload-format",
        default="png",
        choices=["png", "jpeg"],
        help="the file HTTP and gRPC upload (jpeg: quality 90; every path then gets its decoded pixels)",
    )
    how.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra danet-serve setting for the run, e.g. DANET_CPU_MEM_ARENA=true (repeatable)",
    )
    peers = parser.add_argument_group("peers: the same ONNX behind other servers (make peers installs them)")
    peers.add_argument(
        "--peers",
        type=_peer_kinds,
        default=[],
        help=f"comma-separated, of: {', '.join(PEERS)} (KServe model server over v2 gRPC; LitServe over HTTP)",
    )
    peers.add_argument(
        "--peer-python", type=Path, help="the peers' interpreter (default: .venv-peers/bin/python)"
    )
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


def _env_pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("DANET_"):
            raise SystemExit(f"danet-bench: --server-env expects DANET_KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def prepare(args: argparse.Namespace, plan: Plan, work_dir: Path) -> PreparedModel:
    """The model under test (exports run in a separate process, so torch never enters this one)."""
    if args.model is not None:
        return prepare_explicit(
            args.model, args.checkpoint, args.int8_model, args.fp16_model, plan.precisions
        )
    if args.arch == "tiny":
        return prepare_tiny(work_dir)
    if args.arch in ("r50", "r101"):
        depth = int(args.arch[1:])
        logger.info(
            "preparing DANet-ResNet%d-OS8 (random weights, seed %d) in %s", depth, args.seed, work_dir
        )
        prepared, _ = run_isolated(
            prepare_resnet, work_dir, plan.precisions, depth=depth, seed=args.seed, rebuild=args.rebuild
        )
        return prepared
    prepared, _ = run_isolated(prepare_default, work_dir, plan.precisions, rebuild=args.rebuild)
    return prepared


def plan_from(args: argparse.Namespace) -> Plan:
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else DEVICES[args.device]
    return Plan(
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
        eager=not args.skip_eager,
        http=not (args.skip_http or args.skip_server),
        grpc=not (args.skip_grpc or args.skip_server),
        seed=args.seed,
        order_seed=args.order_seed
        if args.order_seed is not None
        else random.SystemRandom().randrange(1 << 31),
        server_env=_env_pairs(args.server_env),
        settle_s=max(0.0, args.settle_ms / 1000.0),
        images=args.images,
        upload_format=args.upload_format,
        peers=args.peers,
        peer_python=str(args.peer_python) if args.peer_python else None,
    )


def run(
    args: argparse.Namespace,
) -> tuple[list[Row], list[report.Target], dict[str, Any], Plan, PreparedModel]:
    plan = plan_from(args)
    default_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "danet-serve" / "bench"
    work_dir = args.work_dir or default_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    described = machine.describe()
    model = prepare(args, plan, work_dir)
    for note in model.notes:
        logger.warning("%s: %s", model.name, note)
    rows = run_benchmark(model, plan)
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
