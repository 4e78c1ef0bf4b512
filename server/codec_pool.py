"""The threads that decode uploads and encode replies, shared by every front door.

``asyncio.to_thread`` would hand this work to the event loop's default pool (up to cores + 4 threads): at
concurrency 4 every request's PNG decode and encode would run at once, on the same cores as the inference.
:class:`CodecPool` runs at most ``codec_threads`` of them at a time; the rest wait their turn in order.
``codec_threads=0`` keeps the default pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["CodecPool"]


class CodecPool:
    """``await pool.run(fn, *args)``: ``fn`` on one of ``threads`` codec threads (the context's variables,
    tracing spans included, go with it, as with ``asyncio.to_thread``)."""

    def __init__(self, threads: int) -> None:
        if threads < 0:
            raise ValueError(f"codec threads must be >= 0, got {threads}")
        self.threads = threads
        self._executor = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="danet-codec") if threads else None
        )

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        """Work already queued still runs (its callers may be waiting); nothing new is taken."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
