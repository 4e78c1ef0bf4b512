"""Run a measurement in a fresh interpreter, so that its peak RSS is its own.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of a spawned child covers exactly that child: the
interpreter, the imports (onnxruntime or torch), the session and the runs. That is the number a user
running the model by hand would see, and it keeps torch's memory out of the floor's process.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


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
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_call_and_measure, fn, args, kwargs).result()
