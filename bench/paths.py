"""The measured paths behind one interface, so that a run can interleave them call by call.

On a machine shared with other work the background load drifts; timing the floor first and the server
ten minutes later would compare two different machines. Every path therefore offers ``call()`` (one
timed request) and ``burst(c)`` (``c`` concurrent requests), and :mod:`bench.runner` rotates through the
paths one call at a time.

* :class:`WorkerPath`: onnxruntime or PyTorch in its own spawned process (:mod:`bench.worker`);
* :class:`ServerPath`: HTTP or gRPC against a running ``danet-serve``, through async clients living on
  one background event loop (:class:`LoopThread`), so connections are reused between calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from bench import worker
from bench.clients import Segmenter, run_closed_loop
from bench.isolate import spawn_pool

T = TypeVar("T")


class PathError(RuntimeError):
    """A path failed a call; the run marks its row as an error and goes on with the others."""


class WorkerPath:
    """An in-process path (floor, int8/fp16 variant, PyTorch eager) in a dedicated process."""

    def __init__(
        self, key: str, precision: str, setup: Callable[..., str], *args: Any, **kwargs: Any
    ) -> None:
        self.key = key
        self.precision = precision
        self._pool = spawn_pool()
        try:
            self.provider = self._pool.submit(setup, *args, **kwargs).result()
        except BaseException:
            self._pool.shutdown(cancel_futures=True)
            raise

    def _do(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def call(self) -> float:
        return self._do(worker.call)

    def burst(self, concurrency: int) -> tuple[int, float]:
        return self._do(worker.burst, concurrency)

    def labels(self) -> np.ndarray | None:
        return self._do(worker.labels)

    def peak_rss(self) -> int | None:
        return self._do(worker.peak_rss)

    def close(self) -> None:
        self._pool.shutdown()


class LoopThread:
    """An asyncio event loop running in a daemon thread; ``run(coro)`` blocks for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-clients", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class ServerPath:
    """HTTP ``POST /segment`` or gRPC ``Segment`` through a running server (one persistent client)."""

    def __init__(self, key: str, loop: LoopThread, client: Segmenter, size: tuple[int, int]) -> None:
        self.key = key
        self.precision = "fp32"
        self._loop = loop
        self._client = client
        loop.run(client.__aenter__())
        self.provider = loop.run(self._check(size))

    async def _check(self, size: tuple[int, int]) -> str:
        """One request whose answer is checked (size, status) before anything is timed."""
        try:
            return await self._client.check(size)
        except RuntimeError as exc:
            raise PathError(str(exc)) from exc

    def call(self) -> float:
        outcome = self._loop.run(self._client())
        if not outcome.ok:
            raise PathError(f"{self.key} call failed: {outcome.status} {outcome.detail[:300]}")
        return outcome.latency_s

    def burst(self, concurrency: int) -> tuple[int, float]:
        result = self._loop.run(run_closed_loop(self._client, concurrency=concurrency, total=concurrency))
        if result.failures or result.rejected:
            bad = (result.failures or result.rejected)[0]
            raise PathError(
                f"{self.key} failed at concurrency {concurrency}: {bad.status} {bad.detail[:300]}"
            )
        return result.ok_count, result.wall_s

    def labels(self) -> np.ndarray | None:
        return None

    def peak_rss(self) -> int | None:
        return None  # the server process's peak is read by the runner (shared by HTTP and gRPC)

    def close(self) -> None:
        self._loop.run(self._client.__aexit__(None, None, None))


MeasuredPath = WorkerPath | ServerPath
