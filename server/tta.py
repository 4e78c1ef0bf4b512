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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import InvalidOption
from server.imaging import resize_rgb
from server.tiling import labels_and_confidence, resize_image, resize_logits, scaled_size, slide_windows

__all__ = ["MODES", "PRESETS", "LogitsFn", "SegmentOptions", "Size", "official", "mmseg", "own_logits"]

MODES = ("whole", "slide")
PRESETS = ("official", "mmseg")
MAX_SCALES = 8
MIN_INPUT = 8  # smallest side a DANet graph accepts
MAX_SIDE = 8192  # base / crop sizes beyond this are refused (a 2048 base at scale 4 is the most used)
OFFICIAL_STRIDE_RATE = 2.0 / 3.0
# exp() of float32 overflows above ~88.7; the official scores stay exact below this and are shifted above
_EXP_LIMIT = 80.0

Size = tuple[int, int]
#: one uint8 picture [h, w, 3] -> its float32 logits [C, h, w] (through the engine's queue and batcher)
LogitsFn = Callable[[np.ndarray], Awaitable[np.ndarray]]


def _pair(value: int | Size | None, name: str) -> Size | None:
    """A size option as (a, b): one number means a square (official) or an equal bound (mmseg)."""
    if value is None:
        return None
    pair = (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))
    low = 1 if name == "stride" else MIN_INPUT
    if not all(low <= v <= MAX_SIDE for v in pair):
        shown = value if isinstance(value, int) else f"{pair[0]}x{pair[1]}"
        raise InvalidOption(f"{name} must be within [{low}, {MAX_SIDE}], got {shown}")
    return pair


@dataclass(frozen=True)
class SegmentOptions:
    """What a client may ask of ``Engine.segment``; ``None`` means "the procedure's default"."""

    mode: str = "whole"  # "whole" | "slide" (this project's procedure)
    scales: tuple[float, ...] = (1.0,)
    flip: bool | None = None  # default: True for tta=official (MultiEvalModule's default), else False
    max_size: int | None = None  # longest inference side; None = the server's max_inference_size
    tta: str | None = None  # None | "official" | "mmseg"
    base_size: int | Size | None = None  # official: long side at scale 1; mmseg: Resize scale (long, short)
    crop_size: int | Size | None = None  # (height, width); mmseg: None = whole-image inference
    stride: int | Size | None = None  # (height, width)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InvalidOption(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if not self.scales or len(self.scales) > MAX_SCALES:
            raise InvalidOption(f"scales must list 1 to {MAX_SCALES} values, got {len(self.scales)}")
        for scale in self.scales:
            if not (0.1 <= scale <= 4.0):
                raise InvalidOption(f"each scale must be within [0.1, 4.0], got {scale}")
        if self.max_size is not None and self.max_size < 8:
            raise InvalidOption(f"max_size must be >= 8, got {self.max_size}")
        if self.tta is None:
            given = [n for n in ("base_size", "crop_size", "stride") if getattr(self, n) is not None]
            if given:
                raise InvalidOption(f"{', '.join(given)} only apply with tta={'|'.join(PRESETS)}")
            return
        if self.tta not in PRESETS:
            raise InvalidOption(f"tta must be one of {list(PRESETS)}, got {self.tta!r}")
        if self.mode != "whole":
            raise InvalidOption(
                f"mode={self.mode} is this project's procedure; with tta={self.tta} the procedure decides "
                "whole or sliding inference from crop_size"
            )
        if self.max_size is not None:
            raise InvalidOption(f"max_size does not apply with tta={self.tta}: base_size sets the sizes")
        base, crop, stride = (_pair(getattr(self, n), n) for n in ("base_size", "crop_size", "stride"))
        if self.tta == "official":
            for name, pair in (("base_size", base), ("crop_size", crop), ("stride", stride)):
                if pair is not None and pair[0] != pair[1]:
                    raise InvalidOption(f"tta=official takes one number for {name}, got {pair[0]}x{pair[1]}")
        elif base is not None and self.augmented:
            raise InvalidOption(
                "tta=mmseg with scales or flip is MMSegmentation's TTA pipeline, which resizes by ratios "
                "of the original image: base_size (the test pipeline's Resize scale) does not apply"
            )
        if stride is not None and crop is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
            raise InvalidOption(f"stride {stride} must not exceed crop_size {crop}")

    @property
    def augmented(self) -> bool:
        return bool(self.flip) or tuple(self.scales) != (1.0,)

    @property
    def use_flip(self) -> bool:
        return self.flip if self.flip is not None else self.tta == "official"

    @property
    def needs_logits(self) -> bool:
        return self.tta is not None or self.mode == "slide" or self.use_flip or tuple(self.scales) != (1.0,)


# --- this project's procedure ----------------------------------------------------------------------
async def slide_logits(picture: np.ndarray, run: LogitsFn, crop: Size, stride: Size) -> np.ndarray:
    """Overlapping windows (shifted inside the picture), logits averaged where they overlap."""
    height, width = picture.shape[:2]
    windows = slide_windows(height, width, crop, stride)
    results = await asyncio.gather(
        *(run(np.ascontiguousarray(picture[y0:y1, x0:x1])) for y0, y1, x0, x1 in windows)
    )
    total = np.zeros((results[0].shape[0], height, width), dtype=np.float32)
    count = np.zeros((height, width), dtype=np.float32)
    for (y0, y1, x0, x1), logits in zip(windows, results, strict=True):
        total[:, y0:y1, x0:x1] += logits
        count[y0:y1, x0:x1] += 1.0
    return total / count[None]


async def own_logits(
    work: np.ndarray, run: LogitsFn, options: SegmentOptions, crop: Size, stride: Size
) -> np.ndarray:
    """Mean of logits over scales x flips, each resized to the work size."""
    height, width = work.shape[:2]

    async def one(scale: float, flip: bool) -> np.ndarray:
        size = (height, width) if scale == 1.0 else scaled_size(height, width, scale)
        picture = resize_rgb(work, size)
        if flip:
            picture = np.ascontiguousarray(picture[:, ::-1])
        logits = await (run(picture) if options.mode == "whole" else slide_logits(picture, run, crop, stride))
        if flip:
            logits = logits[:, :, ::-1]
        return await asyncio.to_thread(resize_logits, logits, (height, width))

    flips = (False, True) if options.use_flip else (False,)
    parts = await asyncio.gather(*(one(s, f) for s in options.scales for f in flips))
    return _mean(parts)


def _mean(parts: list[np.ndarray]) -> np.ndarray:
    """Element-wise mean of same-shape arrays (a new array; the parts are left as they are)."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    total /= len(parts)
    return total


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
    """Labels [H, W] and confidence (the summed scores, normalised per pixel) of the official evaluation."""
    height, width = image.shape[:2]
    crop = crop_size

    async def window_args(window: np.ndarray) -> np.ndarray:
        """``logits + flip(logits of the flipped window)``: the official score is exp of this."""
        padded = np.ascontiguousarray(_pad_to(window, crop))
        if not flip:
            return await run(padded)
        plain, mirrored = await asyncio.gather(run(padded), run(np.ascontiguousarray(padded[:, ::-1])))
        return plain + mirrored[:, :, ::-1]

    async def one_scale(scale: float) -> tuple[np.ndarray, float]:
        new_h, new_w, long_size, short_size = official_scale_size(height, width, base_size, scale)
        picture = await asyncio.to_thread(resize_image, image, (new_h, new_w), True)
        if long_size <= crop:
            windows = [(0, new_h, 0, new_w)]
            canvas = picture
        else:
            canvas = _pad_to(picture, crop) if short_size < crop else picture
            ph, pw = canvas.shape[:2]
            h_grids = int(math.ceil(1.0 * (ph - crop) / stride)) + 1
            w_grids = int(math.ceil(1.0 * (pw - crop) / stride)) + 1
            windows = []
            for idh in range(h_grids):
                for idw in range(w_grids):
                    h0, w0 = idh * stride, idw * stride
                    windows.append((h0, min(h0 + crop, ph), w0, min(w0 + crop, pw)))
        args = await asyncio.gather(*(window_args(canvas[y0:y1, x0:x1]) for y0, y1, x0, x1 in windows))
        return await asyncio.to_thread(_official_scores, args, windows, canvas.shape[:2], (new_h, new_w))

    parts = await asyncio.gather(*(one_scale(s) for s in scales))
    top = max(shift for _, shift in parts)

    def fuse() -> tuple[np.ndarray, np.ndarray]:
        total: np.ndarray | None = None
        for scores, shift in parts:
            resized = resize_logits(scores, (height, width), align_corners=True)
            if shift != top:
                resized *= np.float32(math.exp(shift - top))
            total = resized if total is None else total + resized
        assert total is not None
        labels = total.argmax(axis=0)
        confidence = np.take_along_axis(total, labels[None], axis=0)[0] / np.maximum(total.sum(axis=0), 1e-30)
        return labels, confidence.astype(np.float32)

    return await asyncio.to_thread(fuse)


def _official_scores(
    args: list[np.ndarray], windows: list[tuple[int, int, int, int]], canvas: Size, picture: Size
) -> tuple[np.ndarray, float]:
    """exp-scores averaged over windows, cut to the picture; plus the shift subtracted from every exponent
    (0 unless some exceeded float32's range, where the reference itself would have overflowed)."""
    peak = max(float(a.max()) for a in args)
    shift = max(0.0, peak - _EXP_LIMIT)
    total = np.zeros((args[0].shape[0], *canvas), dtype=np.float32)
    count = np.zeros(canvas, dtype=np.float32)
    for (y0, y1, x0, x1), arg in zip(windows, args, strict=True):
        exponent = arg[:, : y1 - y0, : x1 - x0]
        total[:, y0:y1, x0:x1] += np.exp(exponent - shift if shift else exponent)
        count[y0:y1, x0:x1] += 1.0
    return (total / count[None])[:, : picture[0], : picture[1]], shift


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
    parts = await asyncio.gather(*(one(size, f) for size in sizes for f in flips))

    def fuse() -> tuple[np.ndarray, np.ndarray]:
        if not augmented:
            return labels_and_confidence(parts[0])
        total = _mean(parts)
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
    max_pixels: int,
) -> PresetPlan:
    """Fill the preset's parameters: the request, then the model's eval metadata, then the procedure's."""
    assert options.tta in PRESETS
    base = _pair(options.base_size, "base_size")
    crop = _pair(options.crop_size, "crop_size")
    stride = _pair(options.stride, "stride")
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
    if crop is not None and stride is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
        raise InvalidOption(f"stride {list(stride)} must not exceed crop_size {list(crop)}")
    height, width = image_size
    if options.tta == "official":
        assert base is not None
        sizes = [official_scale_size(height, width, base[0], s)[:2] for s in options.scales]
    else:
        sizes = mmseg_sizes(height, width, base, tuple(options.scales), options.augmented)
    for size in sizes:
        if min(size) < (1 if options.tta == "official" else MIN_INPUT):
            raise InvalidOption(
                f"tta={options.tta} resizes the {height}x{width} image to {size[0]}x{size[1]}; "
                f"the model needs at least {MIN_INPUT} pixels a side"
            )
        if size[0] * size[1] > max_pixels:
            raise InvalidOption(
                f"tta={options.tta} resizes the {height}x{width} image to {size[0]}x{size[1]}, more than "
                f"the server's limit of {max_pixels} pixels; lower base_size or the scales"
            )
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
