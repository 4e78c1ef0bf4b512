"""The measuring side of an in-process path, run inside its own spawned interpreter.

A :class:`bench.paths.WorkerPath` starts one process per (path, size), calls :func:`setup_onnx` or
:func:`setup_eager` once, then :func:`call` / :func:`burst` as often as the interleaved schedule asks.
Timing happens here, around the model call only, so the inter-process round trip is not measured. The
process's peak RSS (:func:`peak_rss`) is therefore that path's own: interpreter, runtime, model, runs.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.floor import (
    GPU_PROVIDERS,
    Runner,
    active_provider,
    make_session,
    runner_factory,
    served_outputs,
    time_concurrent,
)
from common.contract import INPUT_IMAGE, OUTPUT_LABELS

_state: dict[str, Any] = {}


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)


def setup_onnx(model: Path, image: np.ndarray, *, providers: list[str], threads: int) -> str:
    """Create the session (configured like the server's) for ``image``; returns the active provider."""
    _quiet_logging()
    session = make_session(model, providers, threads)
    provider = active_provider(session)
    batch = np.ascontiguousarray(image[None])
    labels = session.run([OUTPUT_LABELS], {INPUT_IMAGE: batch})[0][0]
    make = runner_factory(session, batch, served_outputs(session), io_binding=provider in GPU_PROVIDERS)
    _state.update(make=make, run=make(), labels=labels, provider=provider, session=session)
    return provider


def setup_eager(checkpoint: Path, image: np.ndarray, *, threads: int, device: str) -> str:
    """Load the checkpoint in PyTorch for ``image``; returns a description of what runs it."""
    _quiet_logging()
    from bench.eager import load_eager

    segment, provider = load_eager(checkpoint, image, threads=threads, device=device)

    def make() -> Runner:
        def run() -> None:
            segment()

        return run

    _state.update(make=make, run=make(), labels=segment(), provider=provider)
    return provider


def call() -> float:
    """One timed call (seconds)."""
    run: Callable[[], None] = _state["run"]
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def burst(concurrency: int) -> tuple[int, float]:
    """``concurrency`` threads making one call each at once: (calls, wall seconds)."""
    durations, wall = time_concurrent(_state["make"], concurrency=concurrency, per_thread=1)
    return len(durations), wall


def labels() -> np.ndarray:
    """The label map of the set-up image (for agreement between paths)."""
    return np.asarray(_state["labels"])


def peak_rss() -> int:
    """This process's peak resident set size in bytes."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
