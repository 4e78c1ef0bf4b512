"""Test-time augmentation: this project's procedure and presets that reproduce published evaluations.

Three procedures turn one uploaded image into a class map of its exact size:

* **own** (``mode=whole|slide``, ``scales``, ``flip``): the image is first capped at the server's
  inference size, each scale/flip variant is resized relative to that, sliding windows (MMSegmentation's
  window placement) at the model's preferred size, and *logits* are averaged over every variant.
* **official** (``tta=official``): PyTorch-Encoding's ``MultiEvalModule`` as the DANet authors evaluated.
  Per scale the long side becomes ``ceil(base_size * scale)`` (bilinear, ``align_corners=True``); a
  picture whose long side fits in ``crop_size`` is padded (black) to a ``crop_size`` square and run once,
  a larger one is padded to at least ``crop_size`` and cut into ``crop_size`` windows every ``stride``
  pixels (default ``int(crop_size * 2/3)``), each window padded to a full crop. A window's score is
  ``exp(logits + flipped logits of the flipped window)``; scores are averaged where windows overlap,
  resized back to the input (``align_corners=True``) and summed over scales.
* **mmseg** (``tta=mmseg``): MMSegmentation 1.x. Without augmentation it is the test pipeline:
  ``Resize(scale=base_size, keep_ratio=True)`` (OpenCV bilinear on uint8), whole-image or sliding
  inference (windows shifted to stay inside the picture, never padded; logits averaged), logits resized
  to the input with the model's ``align_corners``. With ``scales``/``flip`` it is ``SegTTAModel`` over the
  TTA pipeline: each ratio resizes the *original* image (``Resize(scale_factor=r, keep_ratio=True)``),
  each variant is inferred as above, and the *softmax probabilities* are averaged.

The presets feed the graph uint8 pixels, so the only difference from the reference code, which resizes
normalised float images, is the rounding of resized pixels to uint8 (the graph normalises inside, and
bilinear resizing commutes with that per-channel affine map).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from server.errors import InvalidOption
from server.imaging import resize_rgb
from server.segmentation.cost import Cost, Limits, check_picture
from server.segmentation.options import MIN_INPUT, PRESETS, SegmentOptions, Size, check_stride, pair
from server.segmentation.tiling import (
    labels_and_confidence,
    official_grid,
    resize_image,
    resize_logits,
    scaled_size,
    slide_grid,
    slide_windows,
)

__all__ = [
    "IN_FLIGHT",
    "LogitsFn",
    "PresetPlan",
    "mmseg",
    "official",
    "own_logits",
    "plan_preset",
    "run_preset",
]

OFFICIAL_STRIDE_RATE = 2.0 / 3.0
# exp() of float32 overflows above ~88.7; the official scores stay exact below this and are shifted above
_EXP_LIMIT = 80.0
#: passes of one request in flight at once: enough for the batcher to merge windows, few enough that one
#: request's windows, copies and logits stay a small, fixed amount of memory whatever its size
IN_FLIGHT = 4

#: one uint8 picture [h, w, 3] -> its float32 logits [C, h, w] (through the engine's queue and batcher)
LogitsFn = Callable[[np.ndarray], Awaitable[np.ndarray]]
T = TypeVar("T")
R = TypeVar("R")


async def bounded(
    items: Sequence[T], work: Callable[[T], Awaitable[R]], limit: int = IN_FLIGHT
) -> AsyncIterator[tuple[T, R]]:
    """``(item, await work(item))`` in the items' order, at most ``limit`` running at once.

    A request is cancelled between passes: cancelling the caller cancels the passes still in flight (each
    leaves the engine's queue, or stops its onnxruntime run), and the ones not started never start."""
    pending: deque[tuple[T, asyncio.Future[R]]] = deque()
    try:
        for item in items:
            pending.append((item, asyncio.ensure_future(work(item))))
            if len(pending) >= limit:
                first, task = pending.popleft()
                yield first, await task
        while pending:
            first, task = pending.popleft()
            yield first, await task
    finally:
        for _, task in pending:
            task.cancel()


class _Sum:
    """A running element-wise sum (the first part is copied; the parts are left as they are)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, part: np.ndarray) -> None:
        if self.total is None:
            self.total = part.copy()
        else:
            self.total += part
        self.count += 1

    def mean(self) -> np.ndarray:
        assert self.total is not None
        self.total /= self.count
        return self.total


# --- this project's procedure ----------------------------------------------------------------------
async def slide_logits(picture: np.ndarray, run: LogitsFn, crop: Size, stride: Size) -> np.ndarray:
    """Overlapping windows (shifted inside the picture), logits averaged where they overlap."""
    height, width = picture.shape[:2]
    windows = slide_windows(height, width, crop, stride)

    def window(box: tuple[int, int, int, int]) -> Awaitable[np.ndarray]:
        y0, y1, x0, x1 = box
        return run(np.ascontiguousarray(picture[y0:y1, x0:x1]))

    total: np.ndarray | None = None
    count = np.zeros((height, width), dtype=np.float32)
    async for (y0, y1, x0, x1), logits in bounded(windows, window):
        if total is None:
            total = np.zeros((logits.shape[0], height, width), dtype=np.float32)
        total[:, y0:y1, x0:x1] += logits
        count[y0:y1, x0:x1] += 1.0
    assert total is not None
    total /= count[None]
    return total


async def own_logits(
    work: np.ndarray, run: LogitsFn, options: SegmentOptions, crop: Size, stride: Size
) -> np.ndarray:
    """Mean of logits over scales x flips, each resized to the work size."""
    height, width = work.shape[:2]

    async def one(variant: tuple[float, bool]) -> np.ndarray:
        scale, flip = variant
        size = (height, width) if scale == 1.0 else scaled_size(height, width, scale)
        picture = resize_rgb(work, size)
        if flip:
            picture = np.ascontiguousarray(picture[:, ::-1])
        logits = await (run(picture) if options.mode == "whole" else slide_logits(picture, run, crop, stride))
        if flip:
            logits = logits[:, :, ::-1]
        return await asyncio.to_thread(resize_logits, logits, (height, width))

    flips = (False, True) if options.use_flip else (False,)
    fused = _Sum()
    async for _, logits in bounded([(s, f) for s in options.scales for f in flips], one, 2):
        fused.add(logits)
    return fused.mean()


# --- official DANet / PyTorch-Encoding MultiEvalModule --------------------------------------------
def _pad_to(picture: np.ndarray, crop: int) -> np.ndarray:
    """Bottom/right padding to at least ``crop`` with black pixels (the official ``-mean / std``)."""
    height, width = picture.shape[:2]
    pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
    if not pad_h and not pad_w:
        return picture
    return np.pad(picture, ((0, pad_h), (0, pad_w), (0, 0)))


def official_scale_size(height: int, width: int, base: int, scale: float) -> tuple[int, int, int, int]:
    """(height, width, long, short) of one scale, with MultiEvalModule's rounding."""
    long_size = int(math.ceil(base * scale))
    if height > width:
        new_h, new_w = long_size, int(1.0 * width * long_size / height + 0.5)
        short_size = new_w
    else:
        new_w, new_h = long_size, int(1.0 * height * long_size / width + 0.5)
        short_size = new_h
    return new_h, new_w, long_size, short_size


def official_windows(
    new_h: int, new_w: int, crop: int, stride: int
) -> tuple[Size, list[tuple[int, int, int, int]]]:
    """The canvas (the picture padded as MultiEvalModule pads it) and its windows, for one scale's size."""
    (ph, pw), rows, cols = official_grid(new_h, new_w, crop, stride)
    windows = []
    for idh in range(rows):
        for idw in range(cols):
            h0, w0 = idh * stride, idw * stride
            windows.append((h0, min(h0 + crop, ph), w0, min(w0 + crop, pw)))
    return (ph, pw), windows


class _ShiftedSum:
    """A running sum of ``exp(x)`` parts kept in float32 range: every part and the total are scaled by
    ``exp(-shift)``, the shift rising (and the total rescaled) only when a part's peak exceeds _EXP_LIMIT,
    where the reference itself would have overflowed."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.shift = 0.0

    def rebase(self, peak: float) -> None:
        shift = max(self.shift, peak - _EXP_LIMIT)
        if shift > self.shift and self.total is not None:
            self.total *= np.float32(math.exp(self.shift - shift))
        self.shift = shift

    def add(self, part: np.ndarray, part_shift: float = 0.0) -> None:
        """Add ``part`` (already scaled by ``exp(-part_shift)``)."""
        self.rebase(part_shift + _EXP_LIMIT)
        if part_shift != self.shift:
            part = part * np.float32(math.exp(part_shift - self.shift))
        if self.total is None:
            self.total = part.copy()
        else:
            self.total += part


async def official(
    image: np.ndarray,
    run: LogitsFn,
    *,
    base_size: int,
    crop_size: int,
    stride: int,
    scales: tuple[float, ...],
    flip: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels [H, W] and confidence (the summed scores, normalised per pixel) of the official evaluation.

    Windows are scored a few at a time and summed as they come, one scale after the other: memory stays
    one scale's canvas of scores and a few windows, whatever the number of windows."""
    height, width = image.shape[:2]
    crop = crop_size

    async def window_args(box: tuple[int, int, int, int], canvas: np.ndarray) -> np.ndarray:
        """``logits + flip(logits of the flipped window)``: the official score is exp of this."""
        y0, y1, x0, x1 = box
        padded = np.ascontiguousarray(_pad_to(canvas[y0:y1, x0:x1], crop))
        if not flip:
            return await run(padded)
        plain, mirrored = await asyncio.gather(run(padded), run(np.ascontiguousarray(padded[:, ::-1])))
        return plain + mirrored[:, :, ::-1]

    async def one_scale(scale: float) -> tuple[np.ndarray, float]:
        new_h, new_w = official_scale_size(height, width, base_size, scale)[:2]
        picture = await asyncio.to_thread(resize_image, image, (new_h, new_w), True)
        (ph, pw), windows = official_windows(new_h, new_w, crop, stride)
        canvas = _pad_to(picture, crop) if (ph, pw) != (new_h, new_w) else picture
        scores = _ShiftedSum()
        count = np.zeros((ph, pw), dtype=np.float32)
        async for (y0, y1, x0, x1), arg in bounded(windows, lambda box: window_args(box, canvas)):
            exponent = arg[:, : y1 - y0, : x1 - x0]
            scores.rebase(float(exponent.max()))
            if scores.total is None:
                scores.total = np.zeros((arg.shape[0], ph, pw), dtype=np.float32)
            scores.total[:, y0:y1, x0:x1] += np.exp(exponent - scores.shift if scores.shift else exponent)
            count[y0:y1, x0:x1] += 1.0
        assert scores.total is not None
        averaged = (scores.total / count[None])[:, :new_h, :new_w]
        return await asyncio.to_thread(resize_logits, averaged, (height, width), True), scores.shift

    fused = _ShiftedSum()
    async for _, (resized, shift) in bounded(scales, one_scale, 1):
        fused.add(resized, shift)
    total = fused.total
    assert total is not None

    def fuse() -> tuple[np.ndarray, np.ndarray]:
        labels = total.argmax(axis=0)
        confidence = np.take_along_axis(total, labels[None], axis=0)[0] / np.maximum(total.sum(axis=0), 1e-30)
        return labels, confidence.astype(np.float32)

    return await asyncio.to_thread(fuse)


# --- MMSegmentation 1.x ---------------------------------------------------------------------------
def _mmcv_scale_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return int(width * float(scale) + 0.5), int(height * float(scale) + 0.5)


def mmseg_rescale(height: int, width: int, scale: Size) -> tuple[int, int]:
    """(height, width) of mmcv's ``imrescale(img, scale)`` with a (long, short) bound, keeping the ratio."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    new_w, new_h = _mmcv_scale_size(width, height, factor)
    return new_h, new_w


def mmseg_ratio_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """(height, width) of ``Resize(scale_factor=ratio, keep_ratio=True)`` in the TTA pipeline."""
    scale_w, scale_h = _mmcv_scale_size(width, height, ratio)
    return mmseg_rescale(height, width, (scale_w, scale_h))


def mmseg_sizes(
    height: int, width: int, base_size: Size | None, scales: tuple[float, ...], augmented: bool
) -> list[Size]:
    """The resized picture sizes: one per TTA ratio, or the test pipeline's single Resize (if any)."""
    if augmented:
        return [mmseg_ratio_size(height, width, r) for r in scales]
    return [mmseg_rescale(height, width, base_size) if base_size else (height, width)]


async def mmseg(
    image: np.ndarray,
    run: LogitsFn,
    *,
    base_size: Size | None,
    crop_size: Size | None,
    stride: Size | None,
    scales: tuple[float, ...],
    flip: bool,
    align_corners: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels [H, W] and confidence (softmax probability, averaged over augmentations) as MMSegmentation."""
    height, width = image.shape[:2]
    augmented = flip or tuple(scales) != (1.0,)
    sizes = mmseg_sizes(height, width, base_size, scales, augmented)

    async def one(size: tuple[int, int], flipped: bool) -> np.ndarray:
        picture = await asyncio.to_thread(resize_image, image, size, False)
        if flipped:
            picture = np.ascontiguousarray(picture[:, ::-1])
        if crop_size is None:
            logits = await run(picture)
        else:
            assert stride is not None
            logits = await slide_logits(picture, run, crop_size, stride)
        if flipped:
            logits = logits[:, :, ::-1]
        resized = await asyncio.to_thread(resize_logits, logits, (height, width), align_corners)
        return _softmax(resized) if augmented else resized

    flips = (False, True) if flip else (False,)
    fused = _Sum()
    async for _, part in bounded([(size, f) for size in sizes for f in flips], lambda v: one(*v), 2):
        fused.add(part)

    def fuse() -> tuple[np.ndarray, np.ndarray]:
        if not augmented:
            assert fused.total is not None
            return labels_and_confidence(fused.total)
        total = fused.mean()
        labels = total.argmax(axis=0)
        return labels, np.take_along_axis(total, labels[None], axis=0)[0]

    return await asyncio.to_thread(fuse)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


# --- resolving a preset against the model's defaults ---------------------------------------------
@dataclass(frozen=True)
class PresetPlan:
    """A preset's parameters after defaults: what ``official``/``mmseg`` run with (and JSON reports)."""

    tta: str
    base_size: Size | None
    crop_size: Size | None
    stride: Size | None
    scales: tuple[float, ...]
    flip: bool
    align_corners: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "tta": self.tta,
            "base_size": list(self.base_size) if self.base_size else None,
            "crop_size": list(self.crop_size) if self.crop_size else None,
            "stride": list(self.stride) if self.stride else None,
            "scales": list(self.scales),
            "flip": self.flip,
            "align_corners": self.align_corners,
        }


def plan_preset(
    options: SegmentOptions,
    image_size: Size,
    defaults: dict[str, Size],
    *,
    preferred_size: Size | None,
    align_corners: bool,
    limits: Limits,
) -> PresetPlan:
    """Fill the preset's parameters: the request, then the model's eval metadata, then the procedure's."""
    assert options.tta in PRESETS
    base = pair(options.base_size, "base_size")
    crop = pair(options.crop_size, "crop_size")
    stride = pair(options.stride, "stride")
    if options.tta == "official":
        base = base or defaults.get("base_size") or (max(image_size),) * 2
        crop = crop or defaults.get("crop_size") or (max(preferred_size or (512, 512)),) * 2
        stride = stride or defaults.get("stride") or (int(crop[0] * OFFICIAL_STRIDE_RATE),) * 2
        plan_align = True
    else:
        if base is None and not options.augmented:
            base = defaults.get("base_size")
        crop = crop or defaults.get("crop_size")
        if crop is not None:
            stride = stride or defaults.get("stride")
            stride = stride or (int(crop[0] * OFFICIAL_STRIDE_RATE), int(crop[1] * OFFICIAL_STRIDE_RATE))
        else:
            stride = None
        plan_align = align_corners
    if crop is not None and stride is not None:
        check_stride(crop, stride)
    height, width = image_size
    if options.tta == "official":
        assert base is not None
        sizes = [official_scale_size(height, width, base[0], s)[:2] for s in options.scales]
    else:
        sizes = mmseg_sizes(height, width, base, tuple(options.scales), options.augmented)
    what = f"tta={options.tta} on a {height}x{width} image"
    cost = Cost()
    flips = 2 if options.use_flip else 1
    for size in sizes:
        if min(size) < (1 if options.tta == "official" else MIN_INPUT):
            raise InvalidOption(
                f"tta={options.tta} resizes the {height}x{width} image to {size[0]}x{size[1]}; "
                f"the model needs at least {MIN_INPUT} pixels a side"
            )
        check_picture(size, limits, what)
        if options.tta == "official":
            assert crop is not None and stride is not None
            _, rows, cols = official_grid(size[0], size[1], crop[0], stride[0])
            cost.add(crop, flips * rows * cols)
        elif crop is None:
            cost.add(size, flips)
        else:
            assert stride is not None
            rows, cols, window = slide_grid(size[0], size[1], crop, stride)
            cost.add(window, flips * rows * cols)
    cost.check(limits, what)
    return PresetPlan(
        tta=options.tta,
        base_size=base,
        crop_size=crop,
        stride=stride,
        scales=tuple(options.scales),
        flip=options.use_flip,
        align_corners=plan_align,
    )


async def run_preset(plan: PresetPlan, image: np.ndarray, run: LogitsFn) -> tuple[np.ndarray, np.ndarray]:
    if plan.tta == "official":
        assert plan.base_size and plan.crop_size and plan.stride
        return await official(
            image,
            run,
            base_size=plan.base_size[0],
            crop_size=plan.crop_size[0],
            stride=plan.stride[0],
            scales=plan.scales,
            flip=plan.flip,
        )
    return await mmseg(
        image,
        run,
        base_size=plan.base_size,
        crop_size=plan.crop_size,
        stride=plan.stride,
        scales=plan.scales,
        flip=plan.flip,
        align_corners=plan.align_corners,
    )
