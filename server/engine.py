"""The inference engine shared by every front door: admission, scheduling and execution.

Requests go to the model instance that serves (name, version) (``server.instance``: its session, batcher
and batching settings), wait with a deadline, and leave the queue or stop their run when their caller goes
away. Warm-up runs before ``ready``. Which versions exist, load and serve is ``server.repository``'s
business; what a segmentation request does with its passes is ``server.segmentation``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from common.contract import INPUT_IMAGE
from server import tracing
from server.batching import Batcher, BatchStats, RunTiming, Slot
from server.codec_pool import CodecPool
from server.errors import DeadlineExceeded, InvalidOption, NotReady, Overloaded, PayloadTooLarge
from server.instance import ModelInstance
from server.kserve.shm import SharedMemoryRegistry
from server.metrics import Metrics
from server.model import ModelInfo, TensorSpec
from server.observe import Observer
from server.repository import ModelRepository
from server.segmentation.cost import Limits
from server.segmentation.tiling import inference_size
from server.settings import Settings, parse_size
from server.statistics import Statistics

logger = logging.getLogger(__name__)

__all__ = ["Admission", "Engine", "ModelInfo", "ModelInstance", "TensorSpec"]

#: The admitted request the current task serves (:meth:`Engine.admit`), for its queue place.
_ADMISSION: contextvars.ContextVar[Admission | None] = contextvars.ContextVar("danet_admission", default=None)


class Admission:
    """An admitted request (:meth:`Engine.admit`): its model's info and, from :meth:`hold` (once its upload
    is read, before it is decoded) until its first run, a place in that model's queue. ``with admission as
    info:`` around the request's work; leaving the block gives up a place the request did not use."""

    def __init__(self, info: ModelInfo, batcher: Batcher, refused: Callable[[], None]) -> None:
        self.info = info
        self.slot: Slot | None = None
        self._batcher = batcher
        self._refused = refused
        self._token: contextvars.Token[Admission | None] | None = None

    def hold(self) -> None:
        """Take the queue place now, or Overloaded / NotReady: a burst is refused here, before its images
        are decoded, rather than at its first run after every one of them has been."""
        if self.slot is not None:
            return
        try:
            self.slot = self._batcher.hold()
        except Overloaded:
            self._refused()
            raise

    def __enter__(self) -> ModelInfo:
        self._token = _ADMISSION.set(self)
        return self.info

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _ADMISSION.reset(self._token)
            self._token = None
        if self.slot is not None:
            self.slot.release()


class Engine:
    """Admission, scheduling and execution over the instances that ``repository`` serves.
    ``await start()`` loads and warms up; then ``ready`` is True."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.limits = Limits.from_settings(settings)  # what one request may cost, for every front door
        self.observer = Observer(Statistics(), tracing.from_settings(settings))
        self.shared_memory = SharedMemoryRegistry(
            enabled=settings.allow_client_shm, max_regions=settings.max_shm_regions
        )
        self.repository = ModelRepository(settings, self)
        self.codecs = CodecPool(settings.codec_threads)  # decoding and encoding, for every front door
        self._ready = False
        self._closing = False

    # --- lifecycle --------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready and not self._closing

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def loaded(self) -> bool:
        return self.repository.initialised

    async def start(self) -> None:
        """Load every model, warm up, then report ready."""
        await self.load()
        await self.warm_up()

    async def load(self) -> None:
        """Create the sessions (in a thread: it can take seconds). Raises ModelLoadError."""
        await self.repository.load_initial()

    # --- what the repository tells us (metrics) ---------------------------------------------------
    def added(self, instance: ModelInstance) -> None:
        name, repository = instance.info.name, self.repository
        self.metrics.track_queue(name, lambda: float(repository.queue_depth(name)))
        self.metrics.provider.labels(name, instance.handle.provider).set(1)
        self.metrics.provider_fallback.labels(name).set(1 if instance.handle.fallback else 0)

    def batch_done(self, info: ModelInfo, stats: BatchStats) -> None:
        self.metrics.batch_size.labels(info.name).observe(stats.batch_size)
        self.metrics.inference.labels(info.name).observe(stats.run_s)
        self.metrics.queue_wait.labels(info.name).observe(stats.queue_wait_s)
        self.observer.executed(info, stats)

    def serving(self, name: str, versions: list[str], retired: list[str]) -> None:
        """After a switch: ``danet_model_version_serving`` follows (called by the repository)."""
        for version in versions:
            self.metrics.serving.labels(name, version).set(1)
        for version in retired:
            with contextlib.suppress(KeyError):
                self.metrics.serving.remove(name, version)

    async def warm_up(self) -> None:
        """Warm every served version, then ready (and, in poll mode, start watching the repository)."""
        for entry in self.repository.entries():
            await self.warm(entry)
        self._ready = True
        self.metrics.ready.set(1)
        self.repository.start_polling()
        logger.info(
            "engine ready: %s",
            ", ".join(
                f"{e.info.name} v{e.info.version} on {e.handle.provider}" for e in self.repository.entries()
            )
            or "no model loaded",
        )

    async def warm(self, entry: ModelInstance) -> None:
        """Run each configured shape bucket once (first runs per shape are slow)."""
        for height, width in self._warmup_shapes(entry.info):
            started = time.perf_counter()
            # batch 1, and the full batch when batching can produce it (new shapes are slow once)
            for batch in sorted({1, entry.batcher.max_batch}):
                images = np.zeros((batch, height, width, 3), dtype=np.uint8)
                await self.run(entry, images, entry.info.output_names)
            logger.info(
                "warmed up %s v%s at %dx%d in %.0f ms",
                entry.info.name,
                entry.info.version,
                height,
                width,
                (time.perf_counter() - started) * 1000,
                extra={"model": entry.info.name},
            )

    def _warmup_shapes(self, info: ModelInfo) -> list[tuple[int, int]]:
        shapes: list[tuple[int, int]] = []
        for item in self.settings.warmup_sizes:
            if item == "preferred":
                if info.preferred_size is None:
                    continue
                size = info.preferred_size
            else:
                size = parse_size(item)
            size = inference_size(size[0], size[1], self.settings.max_inference_size)
            if size not in shapes:
                shapes.append(size)
        return shapes

    async def close(self) -> None:
        """Stop accepting new work, finish what is queued, release the sessions."""
        self._closing = True
        self.metrics.ready.set(0)
        await self.repository.close(self.settings.shutdown_grace_s)
        self.shared_memory.close()
        self.codecs.close()
        self.observer.close()
        logger.info("engine closed")

    # --- models -----------------------------------------------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        """The newest ready version of every model."""
        return [versions[-1].info for versions in self.repository.snapshot().values()]

    def get_model(self, name: str | None = None, version: str | None = None) -> ModelInfo:
        return self.instance(name, version).info

    def versions(self, name: str) -> list[ModelInfo]:
        """Every ready version of ``name``, oldest first."""
        return self.repository.versions(name)

    @property
    def default_model(self) -> str | None:
        return self.repository.default_model

    def admit(self, name: str | None = None, version: str | None = None) -> Admission:
        """The request's admission, or NotReady / Overloaded at once: adapters call this before reading or
        decoding an upload, so that a full queue costs a rejected client nothing but the round trip."""
        entry = self.instance(name, version)
        self._check_ready()
        refused = self.metrics.overloaded.labels(entry.info.name).inc
        try:
            entry.batcher.check_capacity()
        except Overloaded:
            refused()
            raise
        return Admission(entry.info, entry.batcher, refused)

    @staticmethod
    def hold_place() -> None:
        """The current request (if admitted) takes its queue place: after its upload is read, before the
        upload is decoded (a slow upload holds no place)."""
        admission = _ADMISSION.get()
        if admission is not None:
            admission.hold()

    def queue_depth(self, name: str | None = None) -> int:
        return self.repository.queue_depth(self.instance(name).info.name)

    def instance(self, name: str | None, version: str | None = None) -> ModelInstance:
        """The instance serving (name, version) now (for its configuration; requests use ``lease``)."""
        return self.repository.current(name, version)

    # --- raw inference ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, name: str | None, version: str | None = None) -> Iterator[ModelInstance]:
        """The instance serving (name, version), held for one request (a swap waits for it)."""
        self._check_ready()
        with self.repository.lease(name, version) as instance:
            yield instance

    # --- execution ----------------------------------------------------------------------------------
    async def run(
        self, instance: ModelInstance, images: np.ndarray, outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """``images`` through ``instance``'s queue and batcher, within ``request_timeout_s``.

        If the caller goes away (its task is cancelled: deadline, closed connection, cancelled call) or the
        timeout passes, the request leaves the queue, or its run is stopped once no caller of its batch is
        left (``RunOptions.terminate``): abandoned work never holds the engine."""
        batcher = instance.batcher
        timing = RunTiming()  # filled in by the worker: statistics and trace spans read it
        try:
            admission = _ADMISSION.get()
            slot = admission.slot if admission is not None else None
            future = batcher.submit(np.ascontiguousarray(images), tuple(outputs), timing, slot)
        except Overloaded:
            self.metrics.overloaded.labels(instance.info.name).inc()
            raise
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), self.settings.request_timeout_s)
        except TimeoutError as exc:
            self._abandon(instance, future)
            self.observer.run_failed(instance.info, timing)
            raise DeadlineExceeded(
                f"inference on {instance.info.name!r} took longer than {self.settings.request_timeout_s:g} s"
            ) from exc
        except asyncio.CancelledError:
            self._abandon(instance, future)
            self.observer.run_failed(instance.info, timing)
            raise
        except Exception:
            self.observer.run_failed(instance.info, timing)
            raise
        self.observer.ran(instance.info, int(images.shape[0]), timing)
        return results

    def _abandon(self, instance: ModelInstance, future: Future[dict[str, np.ndarray]]) -> None:
        where = instance.batcher.abandon(future)
        if where is not None:
            self.metrics.abandoned.labels(instance.info.name, where).inc()

    async def infer(
        self,
        name: str | None,
        image_batch: np.ndarray,
        outputs: Sequence[str] | None = None,
        *,
        version: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Raw graph outputs for ``image_batch`` uint8 [N, H, W, 3] through the queue and the batcher."""
        return (await self.infer_versioned(name, image_batch, outputs, version=version))[1]

    async def infer_versioned(
        self,
        name: str | None,
        image_batch: np.ndarray,
        outputs: Sequence[str] | None = None,
        *,
        version: str | None = None,
    ) -> tuple[ModelInfo, dict[str, np.ndarray]]:
        """Like ``infer``, with the info of the version that answered (no version = the newest)."""
        with self.lease(name, version) as instance:
            wanted = list(outputs) if outputs else instance.info.output_names
            unknown = [o for o in wanted if o not in instance.info.output_names]
            if unknown:
                raise InvalidOption(
                    f"model {instance.info.name!r} has no output(s) {unknown}; it has {instance.info.output_names}"
                )
            _check_images(image_batch)
            pixels = int(image_batch.shape[1]) * int(image_batch.shape[2])
            if pixels > self.settings.max_pixels:
                raise PayloadTooLarge(
                    f"image of {pixels} pixels exceeds the limit of {self.settings.max_pixels}"
                )
            return instance.info, await self.run(instance, image_batch, wanted)

    def _check_ready(self) -> None:
        if self._closing:
            raise NotReady("the server is shutting down")
        if not self._ready:
            raise NotReady("models are still warming up")

    def describe(self) -> dict[str, Any]:
        """Status for /readyz and logs."""
        models: dict[str, Any] = {}
        for name, versions in self.repository.snapshot().items():
            e = versions[-1]
            models[name] = {
                "version": e.info.version,
                "versions": [v.info.version for v in versions],
                "provider": e.handle.provider,
                "fallback": e.handle.fallback,
                "fallback_reason": e.handle.fallback_reason,
                "batching": e.batcher.max_batch > 1,
                "max_batch_size": e.batcher.max_batch,
                "queue_depth": sum(v.batcher.depth for v in versions),
            }
        return {"ready": self.ready, "repository": self.repository.describe(), "models": models}


def _check_images(images: np.ndarray) -> None:
    """The graph's input contract: uint8 [N, H, W, 3], at least 8 pixels a side. Size limits are the
    front doors' business (``server.kserve.codec``, ``server.segmentation``), before any work starts."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise InvalidOption(f"{INPUT_IMAGE!r} must be uint8, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[3] != 3 or min(images.shape[:3]) < 1:
        raise InvalidOption(f"{INPUT_IMAGE!r} must have shape [N, H, W, 3], got {list(images.shape)}")
    if min(images.shape[1:3]) < 8:
        raise InvalidOption(f"images must be at least 8x8 pixels, got {images.shape[1]}x{images.shape[2]}")
