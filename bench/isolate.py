"""Run a measurement in a fresh interpreter, so that its peak RSS is its own.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of a spawned child covers exactly that child: the
interpreter, the imports (onnxruntime or torch), the session and the runs. That is the number a user
running the model by hand would see, and it keeps torch's memory out of the floor's process.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def die_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Initializer of a spawned worker: exit once ``parent`` is gone (killed without shutting its pool
    down: e.g. SIGTERM to danet-bench alone), instead of holding a loaded model for ever."""

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def spawn_pool() -> ProcessPoolExecutor:
    """One spawned worker process that exits when this process goes."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )


def _peak_rss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def _call_and_measure(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[T, int]:
    import logging

    # Progress of our own steps only; the exporters' INFO chatter would drown it.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    result = fn(*args, **kwargs)
    return result, _peak_rss_bytes()


def run_isolated(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, int]:
    """``fn(*args, **kwargs)`` in a spawned process; returns its result and the child's peak RSS (bytes)."""
    with spawn_pool() as pool:
        return pool.submit(_call_and_measure, fn, args, kwargs).result()
