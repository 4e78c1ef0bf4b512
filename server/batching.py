"""Bounded request queue + dynamic batching of same-shape requests, served by worker threads.

Thread-based on purpose: callers may live on any event loop (uvicorn + grpc.aio share one in production,
tests use others) and wait through ``asyncio.wrap_future``; inference itself never runs on an event loop.
Requests are batched only when their image shape (H, W) and requested outputs are equal (triton #6984).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from server.errors import NotReady, Overloaded

logger = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray, tuple[str, ...], "CancelToken"], dict[str, np.ndarray]]


class CancelToken:
    """Set when every caller of a running batch has gone; the run function stops its work on it
    (onnxruntime: ``RunOptions.terminate``). Callbacks run on the thread that cancels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.cancelled = False

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class _Request:
    images: np.ndarray  # [n, H, W, 3]
    outputs: tuple[str, ...]
    future: Future[dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.monotonic)
    abandoned: bool = False
    token: CancelToken | None = None  # the running batch's, once it runs
    batch: list[_Request] | None = None
    timing: RunTiming | None = None

    @property
    def key(self) -> tuple[object, ...]:
        return (self.images.shape[1:], self.outputs)

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


@dataclass
class RunTiming:
    """When one request was queued, started and finished (``time.monotonic``), filled in by the worker
    before the request's future completes (statistics and tracing read it after)."""

    enqueued: float = 0.0
    started: float | None = None
    finished: float | None = None
    batch_size: int = 0


@dataclass
class BatchStats:
    """What one run looked like, for metrics."""

    batch_size: int
    requests: int
    queue_wait_s: float
    run_s: float


class Slot:
    """A place in a batcher's queue, held by one admitted request while it reads and decodes its upload
    (:meth:`Batcher.hold`). Its first :meth:`Batcher.submit` takes the place; :meth:`release` gives it up
    otherwise (idempotent)."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.held = True

    def release(self) -> None:
        self.batcher._release(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Batcher:
    """Runs ``run_fn(images, outputs)`` on worker threads; merges compatible queued requests.

    ``submit`` never blocks: it raises Overloaded when ``max_queue`` requests are already waiting, the
    requests that hold a :class:`Slot` counted among them.
    """

    def __init__(
        self,
        run_fn: RunFn,
        *,
        name: str,
        workers: int = 1,
        max_batch: int = 1,
        max_delay_s: float = 0.0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue: int = 64,
        retry_after_s: float = 1.0,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._run_fn = run_fn
        self.name = name
        self.max_batch = max(1, max_batch)
        self.max_delay_s = max(0.0, max_delay_s)
        self.preferred = frozenset(int(p) for p in preferred_batch_sizes)  # sent without waiting further
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = 0
        self._held = 0  # slots of admitted requests that have not submitted yet
        self._running: dict[int, _Request] = {}  # id(future) -> request, while its batch runs
        self._threads = [
            threading.Thread(target=self._worker, name=f"infer-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet running)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests waiting or running."""
        with self._cond:
            return len(self._queue) + self._busy

    def check_capacity(self) -> None:
        """Raise NotReady / Overloaded now if ``submit`` would, so callers can refuse before costly work.

        Advisory (the queue may fill in between); ``submit`` keeps the authoritative check.
        """
        with self._cond:
            self._refuse_if_full()

    def hold(self) -> Slot:
        """A place in the queue for a request that still has to read and decode its upload, or NotReady /
        Overloaded now. Held places count against ``max_queue`` like queued requests, so a burst is
        refused at admission rather than after every request of it has decoded its image."""
        with self._cond:
            self._refuse_if_full()
            self._held += 1
        return Slot(self)

    def _release(self, slot: Slot) -> None:
        with self._cond:
            self._unhold(slot)

    def _unhold(self, slot: Slot) -> bool:
        """Whether ``slot`` was a place of this batcher still held (it is not any more); under ``_cond``."""
        if slot.batcher is not self or not slot.held:
            return False
        slot.held = False
        self._held -= 1
        return True

    def _refuse_if_full(self) -> None:
        if self._closing:
            raise NotReady(f"model {self.name!r} is shutting down")
        waiting = len(self._queue) + self._held
        if waiting >= self.max_queue:
            raise Overloaded(
                f"model {self.name!r} has {waiting} requests queued (limit {self.max_queue}); retry later",
                retry_after_s=self.retry_after_s,
            )

    def submit(
        self,
        images: np.ndarray,
        outputs: Sequence[str],
        timing: RunTiming | None = None,
        slot: Slot | None = None,
    ) -> Future[dict[str, np.ndarray]]:
        """Queue one request. With a ``slot`` of this batcher still held, the request takes its place and
        is not refused for a full queue."""
        future: Future[dict[str, np.ndarray]] = Future()
        request = _Request(images=images, outputs=tuple(outputs), future=future, timing=timing)
        if timing is not None:
            timing.enqueued = request.enqueued
        with self._cond:
            taken = slot is not None and not self._closing and self._unhold(slot)
            if not taken:
                self._refuse_if_full()
            self._queue.append(request)
            self._cond.notify()
        return future

    def abandon(self, future: Future[dict[str, np.ndarray]]) -> str | None:
        """The caller of ``future`` has gone (deadline, disconnect, cancelled call): a queued request leaves
        the queue; a running one is marked, and its run is stopped once no caller of its batch is left.
        Returns "queue" or "run" (where the request was), None when it had already finished."""
        token: CancelToken | None = None
        with self._cond:
            for queued in self._queue:
                if queued.future is future:
                    self._queue.remove(queued)
                    future.cancel()
                    return "queue"
            running = self._running.get(id(future))
            if running is None or running.abandoned:
                return None
            running.abandoned = True
            if running.batch is not None and all(r.abandoned for r in running.batch):
                token = running.token
        if token is not None:
            logger.info("stopping a run of %s: every caller has gone", self.name)
            token.cancel()
        return "run"

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting; let the workers finish what is queued, then stop them."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # --- worker side ------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch = [first]
            total = first.size
            if self.max_batch > 1 and total < self.max_batch:
                deadline = time.monotonic() + self.max_delay_s
                while True:
                    total = self._take_compatible(batch, total)
                    remaining = deadline - time.monotonic()
                    if total >= self.max_batch or total in self.preferred or remaining <= 0 or self._closing:
                        break
                    self._cond.wait(remaining)
            self._busy += len(batch)
            return batch

    def _take_compatible(self, batch: list[_Request], total: int) -> int:
        key = batch[0].key
        kept: deque[_Request] = deque()
        while self._queue:
            request = self._queue.popleft()
            if request.key == key and total + request.size <= self.max_batch:
                batch.append(request)
                total += request.size
            else:
                kept.append(request)
        self._queue.extendleft(reversed(kept))
        return total

    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy -= len(batch)

    def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        token = CancelToken()
        with self._cond:
            for request in live:
                request.token, request.batch = token, live
                self._running[id(request.future)] = request
        try:
            self._run_live(live, token)
        finally:
            with self._cond:
                for request in live:
                    self._running.pop(id(request.future), None)
                    request.batch = None

    def _run_live(self, live: list[_Request], token: CancelToken) -> None:
        started = time.monotonic()
        images = live[0].images if len(live) == 1 else np.concatenate([r.images for r in live], axis=0)
        try:
            results = self._run_fn(images, live[0].outputs, token)
        except BaseException as exc:  # delivered to every waiting caller, never kills the worker
            _timed(live, started, int(images.shape[0]))
            for request in live:
                request.future.set_exception(exc)
            return
        run_s = _timed(live, started, int(images.shape[0])) - started
        offset = 0
        for request in live:
            part = {name: value[offset : offset + request.size] for name, value in results.items()}
            offset += request.size
            request.future.set_result(part)
        if self._on_batch is not None:
            try:
                self._on_batch(
                    BatchStats(
                        batch_size=int(images.shape[0]),
                        requests=len(live),
                        queue_wait_s=started - min(r.enqueued for r in live),
                        run_s=run_s,
                    )
                )
            except Exception:  # metrics must never break inference
                logger.exception("batch metrics hook failed")


def _timed(live: list[_Request], started: float, batch_size: int) -> float:
    """Stamp each request's timing with its batch's run; returns the end of the run."""
    finished = time.monotonic()
    for request in live:
        if request.timing is not None:
            request.timing.started, request.timing.finished = started, finished
            request.timing.batch_size = batch_size
    return finished
