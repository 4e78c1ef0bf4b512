"""The segmentation pipeline behind ``POST /segment`` and gRPC ``Segment`` / ``SegmentStream``.

decode -> admission (the model, its queue, the request's cost) -> size policy / test-time augmentation ->
inference through the engine -> labels restored to the input's size. The front doors only turn their wire
format into ``SegmentOptions`` and bytes, and a ``SegmentResult`` back into theirs (``render``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common.contract import OUTPUT_CONFIDENCE, OUTPUT_LABELS, OUTPUT_LOGITS
from server.errors import InvalidImage, InvalidOption, PayloadTooLarge
from server.imaging import decode_image, resize_nearest, resize_rgb
from server.instance import ModelInstance
from server.model import ModelInfo
from server.segmentation.cost import Cost, check_picture
from server.segmentation.options import SegmentOptions, Size
from server.segmentation.tiling import inference_size, labels_and_confidence, scaled_size, slide_grid
from server.segmentation.tta import IN_FLIGHT, LogitsFn, own_logits, plan_preset, run_preset

if TYPE_CHECKING:
    from server.engine import Admission, Engine

__all__ = ["SegmentResult", "Segmenter"]


@dataclass
class SegmentResult:
    model: str
    labels: np.ndarray  # [H, W] uint8 (uint16 above 256 classes), the input image's size
    confidence: np.ndarray | None  # [H, W] float32
    info: ModelInfo  # the version that answered: its classes and palette (they may differ between versions)
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds
    inference_size: Size = (0, 0)  # (height, width) the model saw at scale 1
    preset: dict[str, Any] | None = None  # tta=official|mmseg: the parameters it ran with

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def provider(self) -> str:
        return self.info.provider


def _label_dtype(info: ModelInfo) -> type[np.unsignedinteger[Any]]:
    """Class maps are uint8 up to 256 classes, uint16 above."""
    return np.uint8 if info.num_classes <= 256 else np.uint16


class Segmenter:
    """One image in, its class map (and confidence) out, for every front door."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.limits = engine.limits

    # --- before the body is read ------------------------------------------------------------------
    def admit(self, model: str | None, version: str | None, options: SegmentOptions) -> Admission:
        """NotFound / NotReady / Overloaded, and options the model cannot run, before any upload is read;
        ``with segmenter.admit(...) as info:`` around the request (:class:`server.engine.Admission`)."""
        admission = self.engine.admit(model, version)
        _require_logits(admission.info, options)
        return admission

    # --- decode -----------------------------------------------------------------------------------
    async def decode(self, data: bytes, content_type: str | None = None) -> np.ndarray:
        """An encoded image (JPEG, PNG, ...) -> RGB uint8 [H, W, 3]; the pixel cap is checked before decoding.
        An admitted request takes its queue place first (:meth:`server.engine.Admission.hold`)."""
        self.engine.hold_place()
        return await self.engine.codecs.run(
            decode_image, data, max_pixels=self.settings.max_pixels, content_type=content_type
        )

    def raw(self, height: int, width: int, pixels: bytes) -> np.ndarray:
        """Raw RGB bytes (row-major, 3 per pixel) -> [H, W, 3] uint8."""
        if height < 1 or width < 1:
            raise InvalidImage(f"raw image needs positive height and width, got {height}x{width}")
        if height * width > self.settings.max_pixels:
            raise PayloadTooLarge(
                f"image is {width}x{height} = {width * height} pixels; the limit is {self.settings.max_pixels} "
                "pixels (max_pixels)"
            )
        expected = height * width * 3
        if len(pixels) != expected:
            raise InvalidImage(
                f"raw image {height}x{width} RGB needs {expected} bytes (height * width * 3), got {len(pixels)}"
            )
        return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)

    # --- segment ----------------------------------------------------------------------------------
    async def segment(
        self,
        image: np.ndarray,
        options: SegmentOptions,
        *,
        model: str | None = None,
        version: str | None = None,
    ) -> SegmentResult:
        """Class map (and confidence) of one RGB uint8 image [H, W, 3], at that image's size."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidOption(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        height, width = image.shape[:2]
        check_picture((height, width), self.limits, "the upload")
        with self.engine.lease(model, version) as instance:
            info = instance.info
            _require_logits(info, options)  # a swap may have brought a version without logits
            if options.tta is not None:
                return await self._preset(instance, image, options)
            return await self._own(instance, image, options)

    def work_size(self, info: ModelInfo, image_size: Size, options: SegmentOptions) -> Size:
        """Size policy of this project's procedure: the size inference runs at (scale 1).

        The client's ``max_size``, else the model's preferred size (whole-image inference) when the server
        infers at preferred sizes, else ``max_inference_size``; never more than ``max_inference_size`` for
        the largest scale, so that no pass of any scale exceeds it."""
        cap = self.settings.max_inference_size
        limit: int | None = options.max_size
        if limit is None and options.mode == "whole" and self.settings.infer_at_preferred_size:
            limit = max(info.preferred_size) if info.preferred_size else None
        if cap is not None:
            top = max(options.scales)
            cap = max(8, int(cap / top)) if top > 1 else cap
            limit = cap if limit is None else min(limit, cap)
        return inference_size(image_size[0], image_size[1], limit)

    def _slide_geometry(self, info: ModelInfo) -> tuple[Size, Size]:
        if self.settings.slide_crop is not None:
            crop = (self.settings.slide_crop, self.settings.slide_crop)
        else:
            crop = info.preferred_size or (512, 512)
        ratio = self.settings.slide_stride_ratio
        return crop, (max(1, round(crop[0] * ratio)), max(1, round(crop[1] * ratio)))

    def own_cost(self, info: ModelInfo, work: Size, options: SegmentOptions) -> Cost:
        """Passes and pixels of this project's procedure on a picture of size ``work``."""
        cost = Cost()
        flips = 2 if options.use_flip else 1
        crop, stride = self._slide_geometry(info)
        what = f"mode={options.mode} with scales {list(options.scales)}"
        for scale in options.scales:
            size = work if scale == 1.0 else scaled_size(work[0], work[1], scale)
            check_picture(size, self.limits, what)
            if options.mode == "whole":
                cost.add(size, flips)
            else:
                rows, cols, window = slide_grid(size[0], size[1], crop, stride)
                cost.add(window, flips * rows * cols)
        cost.check(self.limits, what)
        return cost

    async def _own(
        self, instance: ModelInstance, image: np.ndarray, options: SegmentOptions
    ) -> SegmentResult:
        info = instance.info
        height, width = image.shape[:2]
        work_size = self.work_size(info, (height, width), options)
        self.own_cost(info, work_size, options)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        work = (
            image
            if work_size == (height, width)
            else await self.engine.codecs.run(resize_rgb, image, work_size)
        )
        timings["preprocess_ms"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        confidence: np.ndarray | None
        if not options.needs_logits:
            wanted = [OUTPUT_LABELS] + ([OUTPUT_CONFIDENCE] if info.has_confidence else [])
            out = await self.engine.run(instance, work[None], wanted)
            labels = out[OUTPUT_LABELS][0]
            confidence = out[OUTPUT_CONFIDENCE][0] if info.has_confidence else None
            timings["inference_ms"] = (time.perf_counter() - t1) * 1000
            t2 = time.perf_counter()
        else:
            crop, stride = self._slide_geometry(info)
            fused = await own_logits(work, self._logits_fn(instance), options, crop, stride)
            timings["inference_ms"] = (time.perf_counter() - t1) * 1000
            t2 = time.perf_counter()
            labels, confidence = await self.engine.codecs.run(labels_and_confidence, fused)

        labels = labels.astype(_label_dtype(info), copy=False)
        if labels.shape != (height, width):  # full-size maps can be large: not on the event loop
            labels, confidence = await self.engine.codecs.run(
                _restore_size, labels, confidence, (height, width)
            )
        timings["postprocess_ms"] = (time.perf_counter() - t2) * 1000
        return SegmentResult(
            model=info.name,
            labels=np.ascontiguousarray(labels),
            confidence=None if confidence is None else np.ascontiguousarray(confidence, dtype=np.float32),
            info=info,
            timings=timings,
            inference_size=work_size,
        )

    async def _preset(
        self, instance: ModelInstance, image: np.ndarray, options: SegmentOptions
    ) -> SegmentResult:
        """tta=official|mmseg on the image as uploaded: the procedure sets every size itself."""
        info = instance.info
        plan = plan_preset(
            options,
            image.shape[:2],
            info.eval_defaults,
            preferred_size=info.preferred_size,
            align_corners=info.align_corners,
            limits=self.limits,
        )
        t1 = time.perf_counter()
        labels, confidence = await run_preset(plan, image, self._logits_fn(instance))
        return SegmentResult(
            model=info.name,
            labels=np.ascontiguousarray(labels.astype(_label_dtype(info))),
            confidence=np.ascontiguousarray(confidence, dtype=np.float32),
            info=info,
            timings={"inference_ms": (time.perf_counter() - t1) * 1000},
            inference_size=(int(image.shape[0]), int(image.shape[1])),
            preset=plan.to_dict(),
        )

    def _logits_fn(self, instance: ModelInstance) -> LogitsFn:
        """Logits of one picture through the queue, at most IN_FLIGHT passes of this request at once (and
        never more than half the queue), so a big request waits its turn instead of refusing itself."""
        in_flight = asyncio.Semaphore(max(1, min(IN_FLIGHT, self.settings.max_queue // 2)))

        async def logits(picture: np.ndarray) -> np.ndarray:
            async with in_flight:
                out = await self.engine.run(instance, picture[None], [OUTPUT_LOGITS])
            return out[OUTPUT_LOGITS][0].astype(np.float32, copy=False)

        return logits


def _require_logits(info: ModelInfo, options: SegmentOptions) -> None:
    if options.needs_logits and not info.has_logits:
        raise InvalidOption(
            f"model {info.name!r} has no {OUTPUT_LOGITS!r} output, which mode=slide, scales, flip and tta "
            "need; re-export it with danet-export --logits or use mode=whole without test-time augmentation"
        )


def _restore_size(
    labels: np.ndarray, confidence: np.ndarray | None, size: Size
) -> tuple[np.ndarray, np.ndarray | None]:
    """Back to the input's size with nearest neighbour (labels must stay class ids)."""
    return resize_nearest(labels, size), None if confidence is None else resize_nearest(confidence, size)
