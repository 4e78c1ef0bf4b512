"""The floor: onnxruntime ``InferenceSession.run`` in-process on pre-made input.

This is what "running the model by hand" costs, and every other path is reported as a ratio to it.
On a GPU provider the input is copied to the device once and the outputs are bound there (IO
binding), so the floor contains no host/device transfer at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import INPUT_IMAGE, OUTPUT_CONFIDENCE, OUTPUT_LABELS

GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"})


#: A provider by name, or ``(name, provider options)`` as onnxruntime accepts it.
ProviderSpec = str | tuple[str, dict[str, Any]]


def make_session(model: Path, providers: Sequence[ProviderSpec], threads: int) -> Any:
    """An InferenceSession configured like danet-serve's (full graph optimisation, ``threads`` intra-op).
    Providers this onnxruntime build lacks are dropped (the CPU provider is the last resort)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # errors only: the optimiser's "Removing initializer ..." notes are noise on a benchmark's console
    options.log_severity_level = 3
    if threads > 0:
        options.intra_op_num_threads = threads
    available = set(ort.get_available_providers())
    wanted = [p for p in providers if (p if isinstance(p, str) else p[0]) in available]
    return ort.InferenceSession(
        str(model), sess_options=options, providers=wanted or ["CPUExecutionProvider"]
    )


def active_provider(session: Any) -> str:
    return str(session.get_providers()[0])


def served_outputs(session: Any) -> list[str]:
    """The outputs ``POST /segment`` asks the engine for: labels, plus confidence when the graph has it."""
    names = {o.name for o in session.get_outputs()}
    if OUTPUT_LABELS not in names:
        raise ValueError(f"model has no {OUTPUT_LABELS!r} output (outputs: {sorted(names)})")
    return [OUTPUT_LABELS] + ([OUTPUT_CONFIDENCE] if OUTPUT_CONFIDENCE in names else [])


Runner = Callable[[], None]


def runner_factory(
    session: Any, batch: np.ndarray, outputs: Sequence[str], *, io_binding: bool
) -> Callable[[], Runner]:
    """Returns a function that makes one runner per thread (IO bindings are not shared between threads)."""
    feeds = {INPUT_IMAGE: batch}
    names = list(outputs)
    if not io_binding:

        def make_plain() -> Runner:
            def run() -> None:
                session.run(names, feeds)

            return run

        return make_plain

    import onnxruntime as ort

    device_id = 0

    def make_bound() -> Runner:
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_IMAGE, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", device_id))
        for name in names:
            binding.bind_output(name, "cuda", device_id)

        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run

    return make_bound


def time_sequential(run: Runner, *, iterations: int, warmup: int) -> tuple[list[float], float]:
    """Per-call durations (s) of ``iterations`` calls after ``warmup`` untimed ones, and the wall time."""
    for _ in range(warmup):
        run()
    durations: list[float] = []
    t_start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        run()
        durations.append(time.perf_counter() - t0)
    return durations, time.perf_counter() - t_start


def time_concurrent(
    make_runner: Callable[[], Runner], *, concurrency: int, per_thread: int
) -> tuple[list[float], float]:
    """``concurrency`` threads each making ``per_thread`` calls; durations (s) and the wall time."""
    runners = [make_runner() for _ in range(concurrency)]

    def loop(run: Runner) -> list[float]:
        out = []
        for _ in range(per_thread):
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)
        return out

    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(loop, runners))
    wall = time.perf_counter() - t_start
    return [d for r in results for d in r], wall


@dataclass
class FloorMeasurement:
    provider: str
    durations_s: list[float]
    throughput_rps: dict[int, float]
    labels: np.ndarray


def measure_floor(
    model: Path,
    image: np.ndarray,
    *,
    providers: Sequence[str],
    threads: int,
    iterations: int,
    warmup: int,
    concurrency: Sequence[int],
    rounds: int,
) -> FloorMeasurement:
    """Latency at concurrency 1 and throughput at each concurrency of ``session.run`` on ``image``."""
    session = make_session(model, providers, threads)
    provider = active_provider(session)
    outputs = served_outputs(session)
    batch = np.ascontiguousarray(image[None])
    labels = session.run([OUTPUT_LABELS], {INPUT_IMAGE: batch})[0][0]
    factory = runner_factory(session, batch, outputs, io_binding=provider in GPU_PROVIDERS)
    durations, wall = time_sequential(factory(), iterations=iterations, warmup=warmup)
    throughput = {1: len(durations) / wall}
    for c in concurrency:
        if c <= 1:
            continue
        done, wall_c = time_concurrent(factory, concurrency=c, per_thread=rounds)
        throughput[c] = len(done) / wall_c
    return FloorMeasurement(
        provider=provider, durations_s=durations, throughput_rps=throughput, labels=labels
    )
