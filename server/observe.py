"""The one place requests are observed: Triton statistics (``server.statistics``) and tracing spans
(``server.tracing``) from the same hooks.

Front doors wrap a request in ``request(...)`` (the server span, parent from ``traceparent``) and its decode
and encode in ``step("decode" | "encode", info)``; the engine reports each run (``ran`` / ``run_failed``: queue
and inference) and each batch (``executed``). A request's parts are collected in a context variable and
counted together when it ends, so that its counts never disagree between two reads of the statistics.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from server import tracing
from server.batching import BatchStats, RunTiming
from server.model import ModelInfo
from server.statistics import Statistics


def model_attributes(info: ModelInfo) -> dict[str, Any]:
    return {tracing.MODEL: info.name, tracing.VERSION: info.version}


@dataclass
class _Record:
    """What one front-door request did, until it ends (seconds)."""

    info: ModelInfo
    started: float
    images: int = 0
    queue: float = 0.0
    infer: float = 0.0
    decode: float | None = None
    encode: float | None = None
    runs: int = 0
    failed: bool = False


_current: contextvars.ContextVar[_Record | None] = contextvars.ContextVar("danet_request", default=None)


class Observer:
    def __init__(self, statistics: Statistics, tracer: tracing.Tracing) -> None:
        self.statistics = statistics
        self.tracing = tracer

    @contextlib.contextmanager
    def request(self, name: str, carrier: Mapping[str, Any], info: ModelInfo) -> Iterator[tracing.Step]:
        """One front-door request for ``info``'s model: its server span (a no-op with tracing off) and its
        statistics, counted when it ends if it reached the engine."""
        record = _Record(info, time.monotonic())
        token = _current.set(record)
        ok = False
        try:
            attributes = model_attributes(info) if self.tracing.enabled else {}
            with self.tracing.request(name, carrier, attributes) as span:
                yield span
            ok = True
        finally:
            _current.reset(token)
            if record.runs or record.failed:
                self._count(record, ok and not record.failed)

    def _count(self, record: _Record, ok: bool) -> None:
        self.statistics.request(
            record.info.name,
            record.info.version,
            ok=ok,
            total_s=time.monotonic() - record.started,
            images=record.images,
            queue_s=record.queue,
            input_s=record.decode,
            infer_s=record.infer,
            output_s=record.encode,
        )

    @contextlib.contextmanager
    def step(self, kind: str, info: ModelInfo, **attributes: Any) -> Iterator[tracing.Step]:
        """Time a front door's ``decode`` or ``encode`` (``compute_input`` / ``compute_output``), with a span."""
        started = time.perf_counter()
        if self.tracing.enabled:
            with self.tracing.span(kind, {**model_attributes(info), **attributes}) as span:
                yield span
        else:
            yield tracing.NO_STEP
        record = _current.get()
        if record is not None:
            seconds = time.perf_counter() - started
            if kind == "decode":
                record.decode = (record.decode or 0.0) + seconds
            else:
                record.encode = (record.encode or 0.0) + seconds

    def ran(self, info: ModelInfo, images: int, timing: RunTiming) -> None:
        """One run answered (``Engine.run``, on the caller's side after its future)."""
        end = timing.finished if timing.finished is not None else time.monotonic()
        started = timing.started if timing.started is not None else end
        record = _current.get()
        if record is None:  # no front door behind it (warm-up): a request of its own
            self.statistics.request(
                info.name,
                info.version,
                ok=True,
                total_s=time.monotonic() - timing.enqueued,
                images=images,
                queue_s=started - timing.enqueued,
                infer_s=end - started,
            )
        else:
            record.info = info  # the version that answered
            record.runs += 1
            record.images += images
            record.queue += started - timing.enqueued
            record.infer += end - started
        if self.tracing.enabled:
            attributes = {**model_attributes(info), tracing.IMAGES: images}
            self.tracing.record("queue", timing.enqueued, started, attributes)
            self.tracing.record("inference", started, end, {**attributes, tracing.BATCH: timing.batch_size})

    def run_failed(self, info: ModelInfo, timing: RunTiming) -> None:
        record = _current.get()
        if record is None:
            self.statistics.request(
                info.name, info.version, ok=False, total_s=time.monotonic() - timing.enqueued
            )
        else:
            record.failed = True

    def executed(self, info: ModelInfo, stats: BatchStats) -> None:
        """One onnxruntime run (the batcher's hook, on its worker thread)."""
        self.statistics.executed(info.name, info.version, stats.batch_size, stats.run_s)

    def close(self) -> None:
        self.tracing.shutdown()
