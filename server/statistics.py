"""Per model version counters for Triton's statistics extension (``GET /v2/models/stats``, gRPC
``ModelStatistics``), in Triton's JSON form (gRPC parses the same dict into its messages).

What is counted, and where it comes from (``server.observe`` is the one place that feeds it):

- ``success`` / ``fail``: every front-door request that reached the engine (a KServe inference, a
  ``/segment`` or gRPC ``Segment`` call), with its whole time in the server; ``inference_count`` adds the
  images it ran (each pass of a multi-pass ``/segment`` counts), ``last_inference`` is when it finished.
- per successful request, counted together when it completes: ``queue`` (its waits for a worker),
  ``compute_input`` (decoding the tensor or image), ``compute_infer`` (its runs; every request of a batch is
  charged the whole run, as Triton does) and ``compute_output`` (encoding tensors, PNG or JSON).
- runs with no front-door request behind them (warm-up) count as requests without decode or encode.
- ``execution_count`` and ``batch_stats``: one entry per onnxruntime run, by batch size, with its run time
  (decode and encode happen per request, not per batch: the batch entries' ``compute_input`` and
  ``compute_output`` stay 0/0). These come from the same hook as the Prometheus batch metrics, warm-up
  runs included, so ``execution_count`` equals ``danet_inference_seconds_count``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_STEPS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_NO_CACHE = ("cache_hit", "cache_miss")  # no response cache here


def nanoseconds(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += nanoseconds(seconds)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Counters:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    steps: dict[str, Duration] = field(default_factory=lambda: {s: Duration() for s in _STEPS})
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> runs and their time

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                **{step: d.as_dict() for step, d in self.steps.items()},
                **{step: dict(zero) for step in _NO_CACHE},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": dict(zero),
                    "compute_infer": runs.as_dict(),
                    "compute_output": dict(zero),
                }
                for size, runs in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


class Statistics:
    """Thread-safe counters keyed by (model, version); written from worker threads and event loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _Counters] = {}

    def _counters(self, name: str, version: str) -> _Counters:
        key = (name, version)
        counters = self._models.get(key)
        if counters is None:
            counters = self._models[key] = _Counters()
        return counters

    def executed(self, name: str, version: str, batch_size: int, run_s: float) -> None:
        """One onnxruntime run of ``batch_size`` images that succeeded."""
        with self._lock:
            counters = self._counters(name, version)
            counters.execution_count += 1
            counters.batches.setdefault(batch_size, Duration()).add(run_s)

    def request(
        self,
        name: str,
        version: str,
        *,
        ok: bool,
        total_s: float,
        images: int = 0,
        queue_s: float | None = None,
        input_s: float | None = None,
        infer_s: float | None = None,
        output_s: float | None = None,
    ) -> None:
        """One request, all its parts at once (clients such as perf_analyzer compare the counts of
        ``compute_input``, ``compute_infer`` and ``compute_output`` between two reads): a failure counts
        its time only."""
        with self._lock:
            counters = self._counters(name, version)
            if not ok:
                counters.steps["fail"].add(total_s)
                return
            counters.inference_count += images
            counters.last_inference_ms = time.time_ns() // 1_000_000
            counters.steps["success"].add(total_s)
            parts = (("queue", queue_s), ("compute_input", input_s), ("compute_infer", infer_s))
            for step, seconds in (*parts, ("compute_output", output_s)):
                if seconds is not None:
                    counters.steps[step].add(seconds)

    def report(self, versions: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for the (name, version) pairs asked for, zeros where nothing ran."""
        with self._lock:
            return {
                "model_stats": [
                    self._models.get((name, version), _Counters()).as_dict(name, version)
                    for name, version in versions
                ]
            }
