"""The inference engine shared by every front door (REST, KServe v2 REST, gRPC).

A bounded queue with dynamic batching per served version (``server.batching``), warm-up of the configured
shape buckets before ``ready``, and the segmentation pipeline (inference size cap, sliding window, multi-scale
+ flip test-time augmentation with logit averaging). Which versions exist, load and serve is the business of
``server.repository``: every request holds the version it started on (``lease``) until it is answered.
Adapters only translate requests and ``server.errors`` exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.contract import INPUT_IMAGE, OUTPUT_CONFIDENCE, OUTPUT_LABELS, OUTPUT_LOGITS
from server.batching import Batcher, BatchStats
from server.errors import DeadlineExceeded, InvalidOption, NotReady, Overloaded, PayloadTooLarge
from server.imaging import resize_nearest, resize_rgb
from server.metrics import Metrics
from server.model import ModelInfo, TensorSpec
from server.providers import CPU, SessionHandle
from server.repository import LoadedVersion, ModelRepository
from server.settings import Settings, parse_size
from server.tiling import inference_size, labels_and_confidence
from server.tta import LogitsFn, SegmentOptions, own_logits, plan_preset, run_preset

logger = logging.getLogger(__name__)

__all__ = ["Engine", "ModelInfo", "SegmentOptions", "SegmentResult", "TensorSpec"]


@dataclass
class SegmentResult:
    model: str
    labels: np.ndarray  # [H, W] uint8 (uint16 above 256 classes), the input image's size
    confidence: np.ndarray | None  # [H, W] float32
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds
    provider: str = CPU
    inference_size: tuple[int, int] = (0, 0)  # (height, width) the model saw at scale 1
    version: str = "1"  # the version that answered
    info: ModelInfo | None = None  # its classes and palette (they may differ between versions)
    preset: dict[str, Any] | None = None  # tta=official|mmseg: the parameters it ran with


def _label_dtype(info: ModelInfo) -> type[np.unsignedinteger[Any]]:
    """Class maps are uint8 up to 256 classes, uint16 above."""
    return np.uint8 if info.num_classes <= 256 else np.uint16


def _restore_size(
    labels: np.ndarray, confidence: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Back to the input's size with nearest neighbour (labels must stay class ids)."""
    return resize_nearest(labels, size), None if confidence is None else resize_nearest(confidence, size)


class Engine:
    """Queues, batching, execution and the segmentation pipeline over the versions that ``repository``
    serves. ``await start()`` loads and warms up; then ``ready`` is True."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.repository = ModelRepository(settings, self)
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

    def attach(self, info: ModelInfo, handle: SessionHandle) -> LoadedVersion:
        """A new session -> a servable version with its own queue and batcher (called by the repository)."""
        settings = self.settings
        batching = settings.batching == "on" or (settings.batching == "auto" and handle.on_gpu)
        max_batch = settings.max_batch_size if batching else 1
        use_io_binding = settings.io_binding and handle.on_gpu

        def run(images: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
            return self._run_session(handle.session, use_io_binding, images, outputs)

        def on_batch(stats: BatchStats, name: str = info.name) -> None:
            self.metrics.batch_size.labels(name).observe(stats.batch_size)
            self.metrics.inference.labels(name).observe(stats.run_s)
            self.metrics.queue_wait.labels(name).observe(stats.queue_wait_s)

        batcher = Batcher(
            run,
            name=f"{info.name}-v{info.version}",
            workers=settings.workers,
            max_batch=max_batch,
            max_delay_s=settings.batch_delay_ms / 1000.0,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            on_batch=on_batch,
        )
        repository = self.repository
        self.metrics.track_queue(info.name, lambda: float(repository.queue_depth(info.name)))
        self.metrics.provider.labels(info.name, handle.provider).set(1)
        self.metrics.provider_fallback.labels(info.name).set(1 if handle.fallback else 0)
        logger.info(
            "loaded model %s version %s from %s on %s (batching %s, max batch %d, %d worker(s), io binding %s)",
            info.name,
            info.version,
            info.path,
            handle.provider,
            "on" if batching else "off",
            max_batch,
            settings.workers,
            use_io_binding,
            extra={"model": info.name, "version": info.version, "provider": handle.provider},
        )
        return LoadedVersion(info=info, handle=handle, batcher=batcher, use_io_binding=use_io_binding)

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

    async def warm(self, entry: LoadedVersion) -> None:
        """Run each configured shape bucket once (first runs per shape are slow)."""
        for height, width in self._warmup_shapes(entry.info):
            started = time.perf_counter()
            # batch 1, and the full batch when batching can produce it (new shapes are slow once)
            for batch in sorted({1, entry.batcher.max_batch}):
                images = np.zeros((batch, height, width, 3), dtype=np.uint8)
                await self._infer(entry, images, entry.info.output_names)
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
        logger.info("engine closed")

    # --- models -----------------------------------------------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        """The newest ready version of every model."""
        return [versions[-1].info for versions in self.repository.snapshot().values()]

    def get_model(self, name: str | None = None, version: str | None = None) -> ModelInfo:
        return self._entry(name, version).info

    def versions(self, name: str) -> list[ModelInfo]:
        """Every ready version of ``name``, oldest first."""
        return self.repository.versions(name)

    @property
    def default_model(self) -> str | None:
        return self.repository.default_model

    def admit(self, name: str | None = None, version: str | None = None) -> ModelInfo:
        """The model's info, or NotReady / Overloaded at once: adapters call this before reading or decoding
        an upload, so that a full queue costs a rejected client nothing but the round trip."""
        entry = self._entry(name, version)
        self._check_ready()
        try:
            entry.batcher.check_capacity()
        except Overloaded:
            self.metrics.overloaded.labels(entry.info.name).inc()
            raise
        return entry.info

    def queue_depth(self, name: str | None = None) -> int:
        return self.repository.queue_depth(self._entry(name).info.name)

    def _entry(self, name: str | None, version: str | None = None) -> LoadedVersion:
        return self.repository.current(name, version)

    # --- raw inference ----------------------------------------------------------------------------
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
        self._check_ready()
        with self.repository.lease(name, version) as entry:
            wanted = list(outputs) if outputs else entry.info.output_names
            unknown = [o for o in wanted if o not in entry.info.output_names]
            if unknown:
                raise InvalidOption(
                    f"model {entry.info.name!r} has no output(s) {unknown}; it has {entry.info.output_names}"
                )
            self._check_images(image_batch)
            return entry.info, await self._infer(entry, image_batch, wanted)

    def _check_ready(self) -> None:
        if self._closing:
            raise NotReady("the server is shutting down")
        if not self._ready:
            raise NotReady("models are still warming up")

    def _check_images(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InvalidOption(
                f"{INPUT_IMAGE!r} must be uint8, got {getattr(images, 'dtype', type(images))}"
            )
        if images.ndim != 4 or images.shape[3] != 3 or min(images.shape[:3]) < 1:
            raise InvalidOption(f"{INPUT_IMAGE!r} must have shape [N, H, W, 3], got {list(images.shape)}")
        if min(images.shape[1:3]) < 8:
            raise InvalidOption(
                f"images must be at least 8x8 pixels, got {images.shape[1]}x{images.shape[2]}"
            )
        pixels = int(images.shape[1]) * int(images.shape[2])
        if pixels > self.settings.max_pixels:
            raise PayloadTooLarge(f"image of {pixels} pixels exceeds the limit of {self.settings.max_pixels}")

    async def _infer(
        self, entry: LoadedVersion, images: np.ndarray, outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        try:
            future = entry.batcher.submit(np.ascontiguousarray(images), tuple(outputs))
        except Overloaded:
            self.metrics.overloaded.labels(entry.info.name).inc()
            raise
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.request_timeout_s)
        except TimeoutError as exc:
            future.cancel()
            raise DeadlineExceeded(
                f"inference on {entry.info.name!r} took longer than {self.settings.request_timeout_s:g} s"
            ) from exc

    def _run_session(
        self, session: Any, use_io_binding: bool, images: np.ndarray, outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """Worker-thread side: one onnxruntime run (a method, so tests can hold a worker inside it)."""
        if use_io_binding:
            binding = session.io_binding()
            binding.bind_cpu_input(INPUT_IMAGE, images)
            for name in outputs:
                binding.bind_output(name)  # onnxruntime allocates; copied back below
            session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = session.run(list(outputs), {INPUT_IMAGE: images})
        return dict(zip(outputs, values, strict=True))

    # --- segmentation -----------------------------------------------------------------------------
    async def segment(
        self, name: str | None, image: np.ndarray, options: SegmentOptions, *, version: str | None = None
    ) -> SegmentResult:
        """Class map (and confidence) of one RGB uint8 image [H, W, 3], at that image's size."""
        self._check_ready()
        with self.repository.lease(name, version) as entry:
            result = await self._segment(entry, image, options)
        result.version, result.info = entry.info.version, entry.info
        return result

    async def _segment(
        self, entry: LoadedVersion, image: np.ndarray, options: SegmentOptions
    ) -> SegmentResult:
        options.validate()
        info = entry.info
        if options.needs_logits and not info.has_logits:
            raise InvalidOption(
                f"model {info.name!r} has no {OUTPUT_LOGITS!r} output, which mode=slide, scales, flip and tta need; "
                "re-export it with danet-export --logits or use mode=whole without test-time augmentation"
            )
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidOption(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        height, width = image.shape[:2]
        if height * width > self.settings.max_pixels:
            raise PayloadTooLarge(
                f"image of {height * width} pixels exceeds the limit of {self.settings.max_pixels}"
            )
        timings: dict[str, float] = {}
        if options.tta is not None:
            return await self._segment_preset(entry, image, options, timings)
        t0 = time.perf_counter()
        max_size = options.max_size if options.max_size is not None else self.settings.max_inference_size
        work_size = inference_size(height, width, max_size)
        work = (
            image if work_size == (height, width) else await asyncio.to_thread(resize_rgb, image, work_size)
        )
        timings["preprocess_ms"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        confidence: np.ndarray | None
        if not options.needs_logits:
            wanted = [OUTPUT_LABELS] + ([OUTPUT_CONFIDENCE] if info.has_confidence else [])
            out = await self._infer(entry, work[None], wanted)
            labels = out[OUTPUT_LABELS][0]
            confidence = out[OUTPUT_CONFIDENCE][0] if info.has_confidence else None
            timings["inference_ms"] = (time.perf_counter() - t1) * 1000
            t2 = time.perf_counter()
        else:
            crop = self._slide_crop(info)
            ratio = self.settings.slide_stride_ratio
            stride = (max(1, round(crop[0] * ratio)), max(1, round(crop[1] * ratio)))
            fused = await own_logits(work, self._logits_fn(entry), options, crop, stride)
            timings["inference_ms"] = (time.perf_counter() - t1) * 1000
            t2 = time.perf_counter()
            labels, confidence = await asyncio.to_thread(labels_and_confidence, fused)

        labels = labels.astype(_label_dtype(info), copy=False)
        if labels.shape != (height, width):  # full-size maps can be large: not on the event loop
            labels, confidence = await asyncio.to_thread(_restore_size, labels, confidence, (height, width))
        timings["postprocess_ms"] = (time.perf_counter() - t2) * 1000
        return SegmentResult(
            model=info.name,
            labels=np.ascontiguousarray(labels),
            confidence=None if confidence is None else np.ascontiguousarray(confidence, dtype=np.float32),
            timings=timings,
            provider=entry.handle.provider,
            inference_size=work_size,
        )

    async def _segment_preset(
        self, entry: LoadedVersion, image: np.ndarray, options: SegmentOptions, timings: dict[str, float]
    ) -> SegmentResult:
        """tta=official|mmseg on the image as uploaded: the procedure sets every size itself."""
        info = entry.info
        plan = plan_preset(
            options,
            image.shape[:2],
            info.eval_defaults,
            preferred_size=info.preferred_size,
            align_corners=info.align_corners,
            max_pixels=self.settings.max_pixels,
        )
        t1 = time.perf_counter()
        labels, confidence = await run_preset(plan, image, self._logits_fn(entry))
        timings["inference_ms"] = (time.perf_counter() - t1) * 1000
        return SegmentResult(
            model=info.name,
            labels=np.ascontiguousarray(labels.astype(_label_dtype(info))),
            confidence=np.ascontiguousarray(confidence, dtype=np.float32),
            timings=timings,
            provider=entry.handle.provider,
            inference_size=tuple(image.shape[:2]),
            preset=plan.to_dict(),
        )

    def _logits_fn(self, entry: LoadedVersion) -> LogitsFn:
        """Logits of one picture through the queue. One request's windows x scales x flips can outnumber
        ``max_queue`` (official Cityscapes multi-scale: ~100 passes): at most half the queue is in flight
        per request, so a big request waits its turn instead of refusing itself with 503."""
        in_flight = asyncio.Semaphore(max(1, min(16, self.settings.max_queue // 2)))

        async def logits(picture: np.ndarray) -> np.ndarray:
            async with in_flight:
                out = await self._infer(entry, picture[None], [OUTPUT_LOGITS])
            return out[OUTPUT_LOGITS][0].astype(np.float32, copy=False)

        return logits

    def _slide_crop(self, info: ModelInfo) -> tuple[int, int]:
        if self.settings.slide_crop is not None:
            return (self.settings.slide_crop, self.settings.slide_crop)
        if info.preferred_size is not None:
            return info.preferred_size
        return (512, 512)

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
                "batching": e.batcher.max_batch > 1,
                "max_batch_size": e.batcher.max_batch,
                "queue_depth": sum(v.batcher.depth for v in versions),
            }
        return {"ready": self.ready, "repository": self.repository.describe(), "models": models}
