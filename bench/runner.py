"""One benchmark run: prepare the model, start the server, then per size interleave every path.

Per size: start one process per in-process path (floor, variants, PyTorch eager) and a client per
server path (HTTP, gRPC); warm every path up; then take the latency samples in rounds, one call per
path per round, in a freshly shuffled order each round and with a short idle gap before each call;
then the throughput bursts the same way (for each concurrency ``c``: each round gives every path a
burst of ``c`` simultaneous calls). Background load
that drifts during the run therefore lands on all paths alike, and the ratios stay meaningful on a
shared machine. A path that fails is reported as an error row and dropped from the rotation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import report, worker
from bench.clients import GrpcSegmenter, HttpSegmenter, KServeGrpcInfer, Segmenter
from bench.images import test_image, upload
from bench.paths import LoopThread, MeasuredPath, ServerPath, WorkerPath
from bench.peers import PeerProcess, start_peers
from bench.prepare import PreparedModel
from bench.report import Row
from bench.server_proc import ServerProcess
from bench.stats import LatencyStats

logger = logging.getLogger(__name__)

ORDER = [
    report.FLOOR,
    "floor-int8",
    "floor-fp16",
    report.EAGER,
    report.HTTP,
    report.GRPC,
    report.GRPC_RAW,
    report.KSERVE,
    "peer-litserve",
    "peer-kserve",
]


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
    eager: bool = True
    http: bool = True
    grpc: bool = True
    seed: int = 0
    #: Seeds each round's shuffled path order (danet-bench draws one per run unless ``--order-seed``).
    order_seed: int = 0
    #: Idle time before every timed call or burst. onnxruntime's and OpenMP's worker threads spin for a
    #: while after a run; measured here, a call started right after another process's call was 30-40%
    #: slower than one started 100 ms later.
    settle_s: float = 0.1
    server_env: dict[str, str] = field(default_factory=dict)  # extra DANET_* settings for the server
    images: list[str] = field(default_factory=lambda: ["scene"])  # test image kinds (bench.images)
    upload_format: str = "png"  # the file HTTP and gRPC (encoded) upload: png | jpeg
    peers: list[str] = field(default_factory=list)  # bench.peers.PEERS to measure alongside
    peer_python: str | None = None  # the peers' interpreter (default: .venv-peers/bin/python)

    def levels(self, size: tuple[int, int]) -> list[int]:
        """Concurrency levels (> 1) measured at ``size``."""
        if self.concurrency_sizes is not None and size not in self.concurrency_sizes:
            return []
        return [c for c in self.concurrency if c > 1]

    @property
    def eager_device(self) -> str:
        return "cuda" if self.device in ("cuda", "tensorrt") else "cpu"

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
            "schedule": "interleaved",
            "order_seed": self.order_seed,
            "settle_ms": round(self.settle_s * 1000),
            "server_env": self.server_env,
            "images": self.images,
            "upload_format": self.upload_format,
            "peers": self.peers,
        }


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


def server_env(plan: Plan) -> dict[str, str]:
    """The server as the benchmark wants it: same threads and providers, no rejections, no first-shape cost."""
    longest = max(max(s) for s in plan.sizes)
    return {
        "DANET_PROVIDERS": ",".join(plan.providers),
        "DANET_INTRA_OP_THREADS": str(plan.threads),
        "DANET_MAX_QUEUE": str(max(64, 4 * max(plan.concurrency))),
        "DANET_REQUEST_TIMEOUT_S": "7200",
        "DANET_WARMUP_SIZES": ",".join(report.size_text(s) for s in plan.sizes),
        "DANET_MAX_INFERENCE_SIZE": str(max(2048, longest)),
        # the floor runs at the size measured: so does the server (not at the model's preferred size)
        "DANET_INFER_AT_PREFERRED_SIZE": "false",
        "DANET_MAX_REQUEST_PIXELS": str(max(100_000_000, 8 * longest * longest)),
        "DANET_MAX_UPLOAD_BYTES": str(256 * 1024 * 1024),
        "DANET_ACCESS_LOG": "false",
        "DANET_LOG_LEVEL": "WARNING",
        **plan.server_env,
    }


class _Collector:
    """Per-path samples gathered during the interleaved schedule."""

    def __init__(self) -> None:
        self.durations: dict[str, list[float]] = {}
        self.bursts: dict[str, dict[int, list[tuple[int, float]]]] = {}
        self.errors: dict[str, str] = {}
        self.peaks: dict[str, int | None] = {}  # peak RSS after the one-at-a-time calls
        self.samples: dict[str, dict[str, list[dict[str, Any]]]] = {}  # every timed call and burst, in order

    def call(self, key: str, round_index: int, slot: int, seconds: float) -> None:
        """One timed call: its duration, and where it sat (round, and slot in that round's order)."""
        self.durations.setdefault(key, []).append(seconds)
        self._log(key, "calls", {"round": round_index, "slot": slot, "ms": seconds * 1000.0})

    def burst(
        self, key: str, concurrency: int, round_index: int, slot: int, result: tuple[int, float]
    ) -> None:
        """One burst at ``concurrency``: calls that succeeded and its wall time."""
        self.bursts.setdefault(key, {}).setdefault(concurrency, []).append(result)
        calls, wall = result
        record = {
            "concurrency": concurrency,
            "round": round_index,
            "slot": slot,
            "calls": calls,
            "ms": wall * 1000.0,
        }
        self._log(key, "bursts", record)

    def _log(self, key: str, kind: str, record: dict[str, Any]) -> None:
        self.samples.setdefault(key, {"calls": [], "bursts": []})[kind].append(record)


def _order(paths: Sequence[MeasuredPath], round_index: int, seed: int) -> list[MeasuredPath]:
    """The paths in this round's order: a seeded shuffle, so no path always follows the same other one
    (a path's threads may still be spinning when the next one starts; see ``Plan.settle_s``), and, with
    ``Plan.order_seed`` drawn per run, no path sits in the same slots run after run (the machine's speed
    drifts over minutes, which a few calls a path carry into their p50)."""
    order = list(paths)
    random.Random(seed * 100_003 + round_index).shuffle(order)
    return order


def _open_paths(
    model: PreparedModel,
    size: tuple[int, int],
    image: np.ndarray,
    png: bytes,
    plan: Plan,
    server: ServerProcess | None,
    loop: LoopThread | None,
    rows: list[Row],
    peers: Sequence[PeerProcess] = (),
) -> list[MeasuredPath]:
    """Start every path for this size; the ones that cannot start become error/skipped rows."""
    paths: list[MeasuredPath] = []

    def attempt(key: str, precision: str, start: Any) -> None:
        try:
            paths.append(start())
        except Exception as exc:
            logger.error(
                "[%s %s] %s failed to start: %s", model.name, report.size_text(size), key, _one_line(exc)
            )
            rows.append(Row(model.name, size, key, precision, status="error", note=_one_line(exc)))

    onnx_kw = {"providers": plan.providers, "threads": plan.threads}
    attempt(
        report.FLOOR,
        "fp32",
        lambda: WorkerPath(report.FLOOR, "fp32", worker.setup_onnx, model.onnx, image, **onnx_kw),
    )
    for precision in plan.precisions:
        if precision == "fp32":
            continue
        key = f"floor-{precision}"
        variant = model.variants.get(precision)
        if variant is None:
            note = next((n for n in model.notes if precision in n), f"no {precision} variant")
            rows.append(Row(model.name, size, key, precision, status="skipped", note=note))
            continue
        attempt(
            key,
            precision,
            lambda k=key, p=precision, v=variant: WorkerPath(k, p, worker.setup_onnx, v, image, **onnx_kw),
        )
    if not plan.eager:
        rows.append(Row(model.name, size, report.EAGER, status="skipped", note="--skip-eager"))
    elif model.checkpoint is None:
        note = next((n for n in model.notes if "eager" in n or "checkpoint" in n), "no checkpoint")
        rows.append(Row(model.name, size, report.EAGER, status="skipped", note=note))
    else:
        try:
            import torch  # noqa: F401  (only to report a missing torch as a skip, not an error)
        except ImportError as exc:
            rows.append(
                Row(model.name, size, report.EAGER, status="skipped", note=f"torch not installed ({exc})")
            )
        else:
            eager_kw = {"threads": plan.threads, "device": plan.eager_device}
            attempt(
                report.EAGER,
                "fp32",
                lambda: WorkerPath(
                    report.EAGER, "fp32", worker.setup_eager, model.checkpoint, image, **eager_kw
                ),
            )
    if server is not None and loop is not None:
        connections = max(plan.concurrency) + 4
        output = "COLOR" if plan.http_format == "color" else "INDEX"
        content_type = f"image/{plan.upload_format}"
        if plan.http:
            http = HttpSegmenter(
                server.http_url,
                png,
                content_type=content_type,
                params={"format": plan.http_format},
                upload=plan.http_upload,
                max_connections=connections,
            )
            attempt(report.HTTP, "fp32", lambda: ServerPath(report.HTTP, loop, http, size))
        if plan.grpc:
            target = server.grpc_target
            clients: dict[str, Segmenter] = {
                report.GRPC: GrpcSegmenter(target, png, output=output),
                report.GRPC_RAW: GrpcSegmenter(target, image, output="INDEX", raw_labels=True),
                report.KSERVE: KServeGrpcInfer(target, image, model=server_model_name(server)),
            }
            for key, client in clients.items():
                attempt(key, "fp32", lambda k=key, c=client: ServerPath(k, loop, c, size))
    if loop is not None:
        for peer in peers:
            client = peer.client(image, png, f"image/{plan.upload_format}")
            attempt(peer.key, "fp32", lambda k=peer.key, c=client: ServerPath(k, loop, c, size))
    return paths


def server_model_name(server: ServerProcess) -> str:
    """The name the server gave the model (KServe v2 addresses models by name)."""
    import httpx

    models = httpx.get(f"{server.http_url}/v1/models", timeout=30.0).json()["models"]
    return str(models[0]["name"])


def _schedule(
    paths: list[MeasuredPath],
    plan: Plan,
    size: tuple[int, int],
    collected: _Collector,
    label: str,
    after_sequential: Callable[[list[MeasuredPath]], None] | None = None,
) -> None:
    """Warm-up, timed calls, then throughput bursts, round-robin with rotating order.

    ``after_sequential`` runs between the one-at-a-time calls and the bursts (peak memory of one pass
    is read there, before concurrent calls multiply the working set).
    """
    live = list(paths)

    def step(path: MeasuredPath, action: str, fn: Any) -> None:
        if path not in live:
            return
        if plan.settle_s > 0:
            time.sleep(plan.settle_s)
        try:
            fn()
        except Exception as exc:
            logger.error("%s %s failed during %s: %s", label, path.key, action, _one_line(exc))
            collected.errors[path.key] = _one_line(exc)
            live.remove(path)

    for i in range(plan.warmup):
        for path in _order(live, i, plan.order_seed):
            step(path, "warm-up", path.call)
    for i in range(plan.iterations):
        for slot, path in enumerate(_order(live, i, plan.order_seed)):
            step(path, "timing", lambda p=path, i=i, s=slot: collected.call(p.key, i, s, p.call()))
    if after_sequential is not None:
        after_sequential(live)
    for c in plan.levels(size):
        logger.info("%s throughput at concurrency %d", label, c)
        for i in range(plan.rounds):
            for slot, path in enumerate(_order(live, i, plan.order_seed)):
                step(
                    path,
                    f"concurrency {c}",
                    lambda p=path, c=c, i=i, s=slot: collected.burst(p.key, c, i, s, p.burst(c)),
                )


def measure_size(
    model: PreparedModel,
    size: tuple[int, int],
    plan: Plan,
    server: ServerProcess | None,
    loop: LoopThread | None,
    kind: str = "scene",
    peers: Sequence[PeerProcess] = (),
) -> list[Row]:
    label = f"[{model.name} {report.size_text(size)} {kind}]"
    png, image = upload(test_image(kind, *size, seed=plan.seed), plan.upload_format)
    rows: list[Row] = []
    server_reset = server.reset_peak() if server is not None else False
    logger.info("%s starting paths", label)
    paths = _open_paths(model, size, image, png, plan, server, loop, rows, peers)
    for row in rows:  # the paths that could not start
        row.image = kind
    collected = _Collector()
    try:
        logger.info(
            "%s %s: %d warm-up + %d timed calls each, interleaved",
            label,
            ", ".join(p.key for p in paths),
            plan.warmup,
            plan.iterations,
        )

        def read_peaks(live: list[MeasuredPath]) -> None:
            server_peak = server.peak_rss_bytes() if server is not None else None
            for path in live:
                if path.key.startswith(report.PEER_PREFIX):
                    continue  # another process: its memory is not danet-serve's
                collected.peaks[path.key] = server_peak if isinstance(path, ServerPath) else path.peak_rss()

        _schedule(paths, plan, size, collected, label, after_sequential=read_peaks)
        floor_labels = next(
            (p.labels() for p in paths if p.key == report.FLOOR and p.key not in collected.errors), None
        )
        for path in paths:
            if path.key in collected.errors:
                rows.append(
                    Row(
                        model.name,
                        size,
                        path.key,
                        path.precision,
                        path.provider,
                        status="error",
                        note=collected.errors[path.key],
                        image=kind,
                    )
                )
                continue
            durations = collected.durations.get(path.key, [])
            throughput = {1: len(durations) / sum(durations)} if durations else {}
            for c, samples in collected.bursts.get(path.key, {}).items():
                throughput[c] = sum(n for n, _ in samples) / sum(w for _, w in samples)
            row = Row(
                model.name,
                size,
                path.key,
                path.precision,
                path.provider,
                latency=LatencyStats.from_seconds(durations) if durations else None,
                throughput=throughput,
                image=kind,
            )
            row.peak_rss_bytes = collected.peaks.get(path.key)
            row.samples = collected.samples.get(path.key, {})
            row.ratio_paired = report.paired_ratio(durations, collected.durations.get(report.FLOOR, []))
            if path.key.startswith(report.PEER_PREFIX):
                pass
            elif isinstance(path, ServerPath):
                row.note = "peak RSS: the server process, HTTP and gRPC together" + (
                    "" if server_reset else ", since start-up"
                )
            else:
                labels = path.labels()
                if path.key != report.FLOOR and labels is not None and floor_labels is not None:
                    row.agreement = float(np.mean(labels == floor_labels))
            rows.append(row)
    finally:
        for path in paths:
            try:
                path.close()
            except Exception as exc:  # closing must not hide the results
                logger.warning("%s closing %s: %s", label, path.key, _one_line(exc))
    return rows


def run_benchmark(model: PreparedModel, plan: Plan) -> list[Row]:
    """Every size of ``plan`` for ``model``; rows sorted by size, then path."""
    rows: list[Row] = []
    server: ServerProcess | None = None
    loop: LoopThread | None = None
    peers: list[PeerProcess] = []
    if plan.http or plan.grpc:
        logger.info("[%s] starting danet-serve (%s)", model.name, ", ".join(plan.providers))
        server = ServerProcess([model.onnx], env=server_env(plan), grpc=plan.grpc, ready_timeout_s=1800)
        try:
            server.start()
        except Exception as exc:
            note = _one_line(exc)
            logger.error("danet-serve did not start: %s", note)
            paths = [p for p, on in ((report.HTTP, plan.http), (report.GRPC, plan.grpc)) if on]
            rows += [
                Row(model.name, size, p, status="error", note=note) for size in plan.sizes for p in paths
            ]
            server = None
    try:
        if plan.peers:
            logger.info("[%s] starting peers: %s", model.name, ", ".join(plan.peers))
            python = Path(plan.peer_python) if plan.peer_python else None
            peers, failed = start_peers(plan.peers, model.onnx, plan.threads, python)
            for key, note in failed.items():
                logger.warning("%s not measured: %s", key, note)
                rows += [
                    Row(model.name, size, key, status="skipped", note=note, image=kind)
                    for size in plan.sizes
                    for kind in plan.images
                ]
        if server is not None or peers:
            loop = LoopThread()
        for size in plan.sizes:
            for kind in plan.images:
                rows += measure_size(model, size, plan, server, loop, kind, peers)
    finally:
        if loop is not None:
            loop.close()
        for peer in peers:
            peer.stop()
        if server is not None:
            code = server.stop()
            if code != 0:
                logger.warning("danet-serve exited with %s:\n%s", code, server.log_tail(20))
    for peer in peers:
        versions = ", ".join(f"{name} {version}" for name, version in peer.versions.items())
        for row in rows:
            if row.path == peer.key and row.status == "ok":
                row.note = versions
    order = {p: i for i, p in enumerate(ORDER)}
    kinds = {k: i for i, k in enumerate(plan.images)}
    rows.sort(key=lambda r: (r.size[0] * r.size[1], kinds.get(r.image, 99), order.get(r.path, 99)))
    report.compute_ratios(rows)
    return rows


__all__ = ["Plan", "measure_size", "run_benchmark", "server_env"]
