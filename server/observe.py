"""The one place requests are observed: Triton statistics (``server.statistics``) and tracing spans
(``server.tracing``) from the same hooks.

Front doors wrap a request in ``request(...)`` (the server span, parent from ``traceparent``) and its decode
and encode in ``step("decode" | "encode", info)``; the engine reports each run (``ran`` / ``run_failed``,
queue and inference) and each batch (``executed``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from server import tracing
from server.batching import BatchStats, RunTiming
from server.model import ModelInfo
from server.statistics import Statistics

_STEPS = {"decode": "compute_input", "encode": "compute_output"}


def model_attributes(info: ModelInfo) -> dict[str, Any]:
    return {tracing.MODEL: info.name, tracing.VERSION: info.version}


class Observer:
    def __init__(self, statistics: Statistics, tracer: tracing.Tracing) -> None:
        self.statistics = statistics
        self.tracing = tracer

    def request(
        self, name: str, carrier: Mapping[str, Any], info: ModelInfo | None = None
    ) -> contextlib.AbstractContextManager[tracing.Step]:
        """The request's server span (a no-op with tracing off)."""
        attributes = {} if info is None or not self.tracing.enabled else model_attributes(info)
        return self.tracing.request(name, carrier, attributes)

    @contextlib.contextmanager
    def step(self, kind: str, info: ModelInfo, **attributes: Any) -> Iterator[tracing.Step]:
        """Time a front door's decode or encode: ``compute_input`` / ``compute_output`` and a span.
        Only a step that completes is counted."""
        started = time.perf_counter()
        if self.tracing.enabled:
            with self.tracing.span(kind, {**model_attributes(info), **attributes}) as span:
                yield span
        else:
            yield tracing.NO_STEP
        self.statistics.step(info.name, info.version, _STEPS[kind], time.perf_counter() - started)

    def ran(self, info: ModelInfo, images: int, timing: RunTiming) -> None:
        """One request answered by the engine (called on the caller's side, after its future)."""
        end = timing.finished if timing.finished is not None else time.monotonic()
        started = timing.started if timing.started is not None else end
        self.statistics.finished(
            info.name,
            info.version,
            images=images,
            total_s=time.monotonic() - timing.enqueued,
            queue_s=started - timing.enqueued,
            infer_s=end - started,
        )
        if self.tracing.enabled:
            attributes = {**model_attributes(info), tracing.IMAGES: images}
            self.tracing.record("queue", timing.enqueued, started, attributes)
            self.tracing.record("inference", started, end, {**attributes, tracing.BATCH: timing.batch_size})

    def run_failed(self, info: ModelInfo, timing: RunTiming) -> None:
        self.statistics.failed(info.name, info.version, time.monotonic() - timing.enqueued)

    def executed(self, info: ModelInfo, stats: BatchStats) -> None:
        """One onnxruntime run (the batcher's hook, on its worker thread)."""
        self.statistics.executed(info.name, info.version, stats.batch_size, stats.run_s)

    def close(self) -> None:
        self.tracing.shutdown()
