"""What a client may ask of the segmentation pipeline, parsed and validated once for every front door.

``SegmentOptions`` validates itself when it is built: an instance that exists is a valid request, so the
pipeline never checks it again. REST turns query strings into it (``parse_scales``, ``parse_size``), gRPC
its ``SegmentOptions`` message (``size_from_values``); both end here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from server.errors import InvalidOption

__all__ = [
    "FORMATS",
    "MODES",
    "PRESETS",
    "SegmentOptions",
    "Size",
    "pair",
    "parse_scales",
    "parse_size",
    "size_from_values",
]

MODES = ("whole", "slide")
PRESETS = ("official", "mmseg")
FORMATS = ("color", "index", "overlay", "json")
MAX_SCALES = 8
MIN_INPUT = 8  # smallest side a DANet graph accepts
MIN_CROP = 16  # smaller sliding windows cost more per pixel than they are worth
MAX_OVERLAP = 8  # a stride below crop / 8 puts more than 8 windows over every pixel on each axis
MAX_SIDE = 8192  # base / crop sizes beyond this are refused (a 2048 base at scale 4 is the most used)

Size = tuple[int, int]


def pair(value: int | Size | None, name: str) -> Size | None:
    """A size option as (a, b): one number means a square (official) or an equal bound (mmseg)."""
    if value is None:
        return None
    size = (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))
    low = {"stride": MIN_INPUT, "crop_size": MIN_CROP}.get(name, MIN_INPUT)
    if not all(low <= v <= MAX_SIDE for v in size):
        shown = value if isinstance(value, int) else f"{size[0]}x{size[1]}"
        raise InvalidOption(f"{name} must be within [{low}, {MAX_SIDE}], got {shown}")
    return size


def check_stride(crop: Size, stride: Size) -> None:
    """Windows overlap, but neither leave gaps nor pile up: crop / MAX_OVERLAP <= stride <= crop."""
    for c, s in zip(crop, stride, strict=True):
        if s > c:
            raise InvalidOption(f"stride {list(stride)} must not exceed crop_size {list(crop)}")
        if s * MAX_OVERLAP < c:
            raise InvalidOption(
                f"stride {list(stride)} is below crop_size / {MAX_OVERLAP} ({list(crop)}): more than "
                f"{MAX_OVERLAP} windows would cover each pixel per axis; raise stride"
            )


@dataclass(frozen=True)
class SegmentOptions:
    """One request's procedure; ``None`` means "the procedure's default". Validated on construction."""

    mode: str = "whole"  # "whole" | "slide" (this project's procedure)
    scales: tuple[float, ...] = (1.0,)
    flip: bool | None = None  # default: True for tta=official (MultiEvalModule's default), else False
    max_size: int | None = None  # longest inference side; None = the model's preferred size / server cap
    tta: str | None = None  # None | "official" | "mmseg"
    base_size: int | Size | None = None  # official: long side at scale 1; mmseg: Resize scale (long, short)
    crop_size: int | Size | None = None  # (height, width); mmseg: None = whole-image inference
    stride: int | Size | None = None  # (height, width)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.mode not in MODES:
            raise InvalidOption(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if not self.scales or len(self.scales) > MAX_SCALES:
            raise InvalidOption(f"scales must list 1 to {MAX_SCALES} values, got {len(self.scales)}")
        for scale in self.scales:
            if not (math.isfinite(scale) and 0.1 <= scale <= 4.0):
                raise InvalidOption(f"each scale must be within [0.1, 4.0], got {scale}")
        if self.max_size is not None and not MIN_INPUT <= self.max_size <= MAX_SIDE:
            raise InvalidOption(f"max_size must be within [{MIN_INPUT}, {MAX_SIDE}], got {self.max_size}")
        if self.tta is None:
            given = [n for n in ("base_size", "crop_size", "stride") if getattr(self, n) is not None]
            if given:
                raise InvalidOption(f"{', '.join(given)} only apply with tta={'|'.join(PRESETS)}")
            return
        self._validate_preset()

    def _validate_preset(self) -> None:
        if self.tta not in PRESETS:
            raise InvalidOption(f"tta must be one of {list(PRESETS)}, got {self.tta!r}")
        if self.mode != "whole":
            raise InvalidOption(
                f"mode={self.mode} is this project's procedure; with tta={self.tta} the procedure decides "
                "whole or sliding inference from crop_size"
            )
        if self.max_size is not None:
            raise InvalidOption(f"max_size does not apply with tta={self.tta}: base_size sets the sizes")
        base, crop, stride = (pair(getattr(self, n), n) for n in ("base_size", "crop_size", "stride"))
        if self.tta == "official":
            for name, size in (("base_size", base), ("crop_size", crop), ("stride", stride)):
                if size is not None and size[0] != size[1]:
                    raise InvalidOption(f"tta=official takes one number for {name}, got {size[0]}x{size[1]}")
        elif base is not None and self.augmented:
            raise InvalidOption(
                "tta=mmseg with scales or flip is MMSegmentation's TTA pipeline, which resizes by ratios "
                "of the original image: base_size (the test pipeline's Resize scale) does not apply"
            )
        if stride is not None and crop is not None:
            check_stride(crop, stride)

    @property
    def augmented(self) -> bool:
        return bool(self.flip) or self.scales != (1.0,)

    @property
    def use_flip(self) -> bool:
        return self.flip if self.flip is not None else self.tta == "official"

    @property
    def needs_logits(self) -> bool:
        return self.tta is not None or self.mode == "slide" or self.use_flip or self.scales != (1.0,)


# --- wire forms -----------------------------------------------------------------------------------
def parse_scales(text: str | None) -> tuple[float, ...]:
    """``0.75,1,1.25`` (REST); empty = (1.0,)."""
    if text is None or not text.strip():
        return (1.0,)
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise InvalidOption(f"scales must be comma-separated numbers, got {text!r}") from exc


def parse_size(text: str | None, name: str) -> int | Size | None:
    """``N`` or ``AxB`` (e.g. ``768``, ``2048x1024``), as REST query strings give them."""
    if text is None or not text.strip():
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) in (1, 2):
        return size_from_values(values, name)
    raise InvalidOption(f"{name} must be a number or AxB (e.g. 768 or 2048x1024), got {text!r}")


def size_from_values(values: Iterable[int], name: str) -> int | Size | None:
    """One or two numbers (gRPC's repeated field, or a parsed REST value) -> an option value."""
    sizes = [int(v) for v in values]
    if len(sizes) > 2:
        raise InvalidOption(f"{name} takes one or two values, got {sizes}")
    if not sizes:
        return None
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])
