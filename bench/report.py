"""Benchmark results: rows, ratios to the floor, the performance targets, and the markdown/JSON renderings.

Every measured path is one :class:`Row` per (model, size, path). Ratios are computed here, after all
measurements, against the fp32 floor of the same model and size. Targets come out PASS or MISS with
the measured figure next to the required one; a target that was not measured is N/A with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import LatencyStats

FLOOR = "floor"
HTTP = "http"
GRPC = "grpc"
GRPC_RAW = "grpc-raw"
KSERVE = "kserve"
EAGER = "eager"
PATH_LABELS = {
    FLOOR: "onnxruntime session.run (floor)",
    HTTP: "HTTP POST /segment",
    GRPC: "gRPC Segment",
    GRPC_RAW: "gRPC Segment, raw pixels in, raw labels out",
    KSERVE: "gRPC KServe v2 ModelInfer, labels only",
    EAGER: "PyTorch eager",
    "floor-int8": "onnxruntime int8",
    "floor-fp16": "onnxruntime fp16",
    "peer-kserve": "peer: KServe model server, v2 gRPC ModelInfer, labels only",
    "peer-litserve": "peer: LitServe POST /predict (upload in, palette PNG out)",
}
SERVER_PATHS = (HTTP, GRPC)
#: The per-request cost. (path, p50 / floor limit at 512x512); every path <= 1.03x at 1024x2048.
OVERHEAD_LIMITS = ((HTTP, 1.05), (GRPC_RAW, 1.03), (KSERVE, 1.03))
LARGE_LIMIT = 1.03
PEER_PREFIX = "peer-"
REFERENCE_SIZE = (512, 512)
LARGE_SIZE = (1024, 2048)
RSS_LIMIT_BYTES = 1_200_000_000


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass
class Row:
    model: str
    size: tuple[int, int]  # (height, width)
    path: str  # FLOOR, HTTP, GRPC, EAGER, "floor-int8", "floor-fp16"
    precision: str = "fp32"
    provider: str = ""
    latency: LatencyStats | None = None
    throughput: dict[int, float] = field(default_factory=dict)  # concurrency -> successful calls per second
    peak_rss_bytes: int | None = None
    agreement: float | None = None  # fraction of pixels equal to the fp32 floor's labels
    status: str = "ok"  # ok | skipped | error
    note: str = ""
    ratio_p50: float | None = None  # p50 / floor p50
    ratio_throughput: dict[int, float] = field(default_factory=dict)  # throughput[c] / best floor throughput
    image: str = "scene"  # the test image: "scene" (photo-like street scene) or "noise"
    ratio_paired: float | None = None  # median over rounds of (this call / the floor's call in that round)
    # every timed call ({"round", "slot", "ms"}) and burst ({"concurrency", "round", "slot", "calls", "ms"}),
    # in the order they ran: the slot is the path's place in that round's drawn order
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return PATH_LABELS.get(self.path, self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "size": size_text(self.size),
            "path": self.path,
            "label": self.label,
            "precision": self.precision,
            "provider": self.provider,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "throughput_rps": {str(c): v for c, v in sorted(self.throughput.items())},
            "peak_rss_mb": None if self.peak_rss_bytes is None else self.peak_rss_bytes / 1e6,
            "agreement": self.agreement,
            "ratio_p50_to_floor": self.ratio_p50,
            "ratio_throughput_to_best_floor": {str(c): v for c, v in sorted(self.ratio_throughput.items())},
            "status": self.status,
            "note": self.note,
            "image": self.image,
            "ratio_paired_median": self.ratio_paired,
            "samples": self.samples,
        }


def _find(
    rows: Sequence[Row], model: str, size: tuple[int, int], path: str, image: str | None = None
) -> Row | None:
    """The measured row; ``image=None`` takes the first image kind that has one."""
    for row in rows:
        same = row.model == model and row.size == size and row.path == path
        if same and row.status == "ok" and (image is None or row.image == image):
            return row
    return None


def paired_ratio(samples: Sequence[float], floor: Sequence[float]) -> float | None:
    """Median over rounds of ``sample / floor sample`` of the same round.

    Each round times every path once, close together, so the pair shares the machine's load of that
    moment: on a busy shared machine this is steadier than the ratio of two medians (same quantity,
    less drift)."""
    if not samples or len(samples) != len(floor):
        return None
    ratios = sorted(s / f for s, f in zip(samples, floor, strict=True) if f > 0)
    if not ratios:
        return None
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def compute_ratios(rows: Sequence[Row]) -> None:
    """Fill ``ratio_p50`` and ``ratio_throughput`` of every row from the fp32 floor of its model, size and
    test image."""
    for row in rows:
        floor = _find(rows, row.model, row.size, FLOOR, row.image)
        if floor is None or floor.latency is None or row.latency is None:
            continue
        row.ratio_p50 = row.latency.p50 / floor.latency.p50
        best = max(floor.throughput.values(), default=0.0)
        if best > 0:
            row.ratio_throughput = {c: v / best for c, v in row.throughput.items()}


@dataclass
class Target:
    key: str
    description: str
    required: str
    measured: str
    status: str  # PASS | MISS | N/A
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _models(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r.model for r in rows))


def _reference_size(rows: Sequence[Row], model: str) -> tuple[int, int] | None:
    sizes = [r.size for r in rows if r.model == model]
    if REFERENCE_SIZE in sizes:
        return REFERENCE_SIZE
    return min(sizes, key=lambda s: s[0] * s[1]) if sizes else None


def evaluate_targets(rows: Sequence[Row]) -> list[Target]:
    """The performance targets, per model, at 512x512 (or the smallest size run) unless stated."""
    targets: list[Target] = []
    for model in _models(rows):
        size = _reference_size(rows, model)
        if size is None:
            continue
        at = f"{model} {size_text(size)}"
        floor = _find(rows, model, size, FLOOR)
        for path, limit in ((HTTP, 1.10), (GRPC, 1.05)):
            row = _find(rows, model, size, path)
            desc = f"{PATH_LABELS[path]} p50 vs floor p50 ({at})"
            if row is None or row.ratio_p50 is None:
                targets.append(Target(f"{path}-p50", desc, f"<= {limit:.2f}x", "-", "N/A", "not measured"))
            else:
                measured = (
                    f"{row.ratio_p50:.3f}x ({row.latency.p50:.1f} vs {floor.latency.p50:.1f} ms)"
                    if row.latency and floor and floor.latency
                    else f"{row.ratio_p50:.3f}x"
                )
                targets.append(
                    Target(f"{path}-p50", desc, f"<= {limit:.2f}x", measured, _status(row.ratio_p50 <= limit))
                )
        eager = _find(rows, model, size, EAGER)
        desc = f"onnxruntime fp32 speed-up over PyTorch eager ({at})"
        if eager is None or eager.ratio_p50 is None:
            note = next(
                (r.note for r in rows if r.model == model and r.path == EAGER and r.note), "not measured"
            )
            targets.append(Target("ort-vs-eager", desc, ">= 1.50x", "-", "N/A", note))
        else:
            targets.append(
                Target(
                    "ort-vs-eager",
                    desc,
                    ">= 1.50x",
                    f"{eager.ratio_p50:.2f}x",
                    _status(eager.ratio_p50 >= 1.5),
                )
            )
        int8 = _find(rows, model, size, "floor-int8")
        desc = f"int8 speed-up over fp32 with >= 99% pixel agreement ({at})"
        if int8 is None or int8.ratio_p50 is None:
            note = next(
                (r.note for r in rows if r.model == model and r.path == "floor-int8" and r.note),
                "not measured",
            )
            targets.append(Target("int8", desc, ">= 2.50x, >= 99%", "-", "N/A", note))
        else:
            speedup = 1.0 / int8.ratio_p50
            agreement = int8.agreement if int8.agreement is not None else 0.0
            targets.append(
                Target(
                    "int8",
                    desc,
                    ">= 2.50x, >= 99%",
                    f"{speedup:.2f}x, {agreement * 100:.2f}%",
                    _status(speedup >= 2.5 and agreement >= 0.99),
                )
            )
        for path in SERVER_PATHS:
            row = _find(rows, model, size, path)
            desc = f"{PATH_LABELS[path]} throughput at concurrency 4 vs best in-process ({at})"
            if row is None or 4 not in row.ratio_throughput:
                targets.append(
                    Target(f"{path}-c4", desc, ">= 0.95x", "-", "N/A", "concurrency 4 not measured")
                )
            else:
                ratio = row.ratio_throughput[4]
                targets.append(
                    Target(
                        f"{path}-c4",
                        desc,
                        ">= 0.95x",
                        f"{ratio:.3f}x ({row.throughput[4]:.2f}/s)",
                        _status(ratio >= 0.95),
                    )
                )
        large = [
            r for r in rows if r.model == model and r.size == LARGE_SIZE and r.path in (FLOOR, *SERVER_PATHS)
        ]
        desc = f"peak RSS at {size_text(LARGE_SIZE)}, one pass ({model})"
        if not any(r.peak_rss_bytes for r in large):
            targets.append(
                Target("rss-large", desc, "<= 1200 MB", "-", "N/A", f"{size_text(LARGE_SIZE)} not measured")
            )
        for r in large:
            if r.peak_rss_bytes is None or r.status != "ok":
                continue
            targets.append(
                Target(
                    f"rss-large-{r.path}",
                    f"{desc}: {r.label}",
                    "<= 1200 MB",
                    f"{r.peak_rss_bytes / 1e6:.0f} MB",
                    _status(r.peak_rss_bytes <= RSS_LIMIT_BYTES),
                )
            )
        targets += overhead_targets(rows, model)
    return targets


def _ratio_target(key: str, desc: str, row: Row | None, limit: float) -> Target:
    if row is None or row.ratio_p50 is None or row.latency is None:
        return Target(key, desc, f"<= {limit:.2f}x", "-", "N/A", "not measured")
    paired = "" if row.ratio_paired is None else f"; paired {row.ratio_paired:.3f}x"
    measured = f"{row.ratio_p50:.3f}x ({row.latency.p50:.1f} ms{paired})"
    return Target(key, desc, f"<= {limit:.2f}x", measured, _status(row.ratio_p50 <= limit))


def overhead_targets(rows: Sequence[Row], model: str) -> list[Target]:
    """Per test image: the server paths' p50 against the floor at 512x512 and 1024x2048, and
    HTTP throughput at concurrency 4."""
    targets: list[Target] = []
    images = list(dict.fromkeys(r.image for r in rows if r.model == model))
    for image in images:
        for size, limits in (
            (REFERENCE_SIZE, OVERHEAD_LIMITS),
            (LARGE_SIZE, tuple((p, LARGE_LIMIT) for p, _ in OVERHEAD_LIMITS)),
        ):
            if not any(r.model == model and r.size == size and r.image == image for r in rows):
                continue
            at = f"{model} {size_text(size)}, {image}"
            for path, limit in limits:
                row = _find(rows, model, size, path, image)
                desc = f"{PATH_LABELS[path]} p50 vs floor ({at})"
                targets.append(_ratio_target(f"{path}-p50-{size_text(size)}-{image}", desc, row, limit))
            http = _find(rows, model, size, HTTP, image)
            if size == REFERENCE_SIZE and http is not None and 4 in http.ratio_throughput:
                ratio = http.ratio_throughput[4]
                targets.append(
                    Target(
                        f"http-c4-{image}",
                        f"{PATH_LABELS[HTTP]} throughput at concurrency 4 vs floor ({at})",
                        ">= 0.95x",
                        f"{ratio:.3f}x ({http.throughput[4]:.2f}/s)",
                        _status(ratio >= 0.95),
                    )
                )
    return targets


# --- rendering -----------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(
    rows: Sequence[Row], targets: Sequence[Target], machine: dict[str, Any], config: dict[str, Any]
) -> str:
    concurrencies = sorted({c for r in rows for c in r.throughput} | set(config.get("concurrency", [])))
    lines = ["## danet-bench", ""]
    lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if v not in (None, "", [])))
    lines.append(
        "Run: "
        + ", ".join(
            f"{k}={v}"
            for k, v in config.items()
            if k
            in (
                "providers",
                "threads",
                "iterations",
                "warmup",
                "rounds",
                "concurrency",
                "http_format",
                "upload_format",
                "schedule",
            )
            or (k == "server_env" and v)
        )
    )
    lines.append("")
    head = ["model", "size", "image", "path", "provider", "p50 ms", "p95 ms", "p99 ms"]
    head += [f"req/s c={c}" for c in concurrencies]
    head += ["peak RSS MB (one at a time)", "p50 / floor", "paired / floor", "c=4 thr / best floor"]
    head += ["agreement"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        if r.status != "ok":
            continue
        lat = r.latency
        cells = [r.model, size_text(r.size), r.image, r.label, r.provider or "-"]
        cells += [
            _fmt(lat.p50 if lat else None),
            _fmt(lat.p95 if lat else None),
            _fmt(lat.p99 if lat else None),
        ]
        cells += [_fmt(r.throughput.get(c), ".2f") for c in concurrencies]
        cells += [_fmt(None if r.peak_rss_bytes is None else r.peak_rss_bytes / 1e6, ".0f")]
        cells += [_fmt(r.ratio_p50, ".3f", "x"), _fmt(r.ratio_paired, ".3f", "x")]
        cells += [_fmt(r.ratio_throughput.get(4), ".3f", "x")]
        cells += [_fmt(None if r.agreement is None else r.agreement * 100, ".2f", "%")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Targets",
        "",
        "| target | required | measured | result |",
        "|---|---|---|---|",
    ]
    for t in targets:
        measured = t.measured if not t.note else f"{t.measured} ({t.note})"
        lines.append(f"| {t.description} | {t.required} | {measured} | **{t.status}** |")
    skipped = [r for r in rows if r.status != "ok"]
    if skipped:
        lines += ["", "### Not measured", ""]
        lines += [f"- {r.model} {size_text(r.size)} {r.label}: {r.status}: {r.note}" for r in skipped]
    return "\n".join(lines) + "\n"


def to_json(
    rows: Sequence[Row],
    targets: Sequence[Target],
    machine: dict[str, Any],
    config: dict[str, Any],
    models: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "machine": machine,
        "config": config,
        "models": list(models),
        "results": [r.to_dict() for r in rows],
        "targets": [t.to_dict() for t in targets],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
