"""Validate what the caller passes before anything is sent ("expected X, got Y")."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client._errors import DanetClientError
from client._types import FORMATS

ImageInput = str | Path | bytes | bytearray | memoryview | np.ndarray


@dataclass(frozen=True)
class Image:
    """Either encoded file bytes or raw RGB pixels ``[H, W, 3]`` uint8."""

    encoded: bytes | None = None
    pixels: np.ndarray | None = None

    def as_encoded(self) -> bytes:
        """Encoded bytes; raw pixels are PNG-encoded (lossless) for transports that need a file."""
        if self.encoded is not None:
            return self.encoded
        from PIL import Image as PILImage

        assert self.pixels is not None  # by construction
        out = io.BytesIO()
        PILImage.fromarray(self.pixels, "RGB").save(out, format="PNG", compress_level=1)
        return out.getvalue()


@dataclass(frozen=True)
class Options:
    format: str
    model: str | None
    alpha: float | None
    mode: str | None
    scales: tuple[float, ...]
    flip: bool | None  # None: the server's default (false, or true with tta="official")
    max_size: int | None
    tta: str | None = None
    base_size: tuple[int, ...] = ()
    crop_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()


def _invalid(message: str) -> DanetClientError:
    return DanetClientError(message, code="invalid_input")


def image_from(value: Any) -> Image:
    """Accept a path, encoded bytes or an RGB uint8 array."""
    if isinstance(value, str | Path):
        path = Path(value)
        if not path.is_file():
            raise _invalid(f"expected an image file, got {str(path)!r} (not a file)")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _invalid(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
        if not data:
            raise _invalid(f"expected an image file, got an empty file {str(path)!r}")
        return Image(encoded=data)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if not data:
            raise _invalid("expected encoded image bytes, got 0 bytes")
        return Image(encoded=data)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise _invalid(f"expected a uint8 [H, W, 3] RGB array, got {value.dtype} {tuple(value.shape)}")
        if value.shape[0] < 1 or value.shape[1] < 1:
            raise _invalid(f"expected a non-empty image, got shape {tuple(value.shape)}")
        return Image(pixels=np.ascontiguousarray(value))
    raise _invalid(f"expected a path, encoded image bytes or a numpy array, got {type(value).__name__}")


TTA_PRESETS: tuple[str, ...] = ("official", "mmseg")


def _sizes(name: str, value: int | Sequence[int] | None) -> tuple[int, ...]:
    """``N`` or ``(a, b)``: base_size is (long, short), crop_size/stride (height, width)."""
    if value is None:
        return ()
    values = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(values) <= 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise _invalid(f"expected {name} to be one positive integer or two, got {value!r}")
    return values


def options_from(
    *,
    format: str,
    model: str | None,
    alpha: float | None,
    mode: str | None,
    scales: Sequence[float] | None,
    flip: bool | None,
    max_size: int | None,
    tta: str | None = None,
    base_size: int | Sequence[int] | None = None,
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
) -> Options:
    if format not in FORMATS:
        raise _invalid(f"expected format to be one of {', '.join(FORMATS)}, got {format!r}")
    if model is not None and (not isinstance(model, str) or not model):
        raise _invalid(f"expected a model name, got {model!r}")
    if alpha is not None and not (isinstance(alpha, int | float) and 0.0 <= float(alpha) <= 1.0):
        raise _invalid(f"expected alpha between 0 and 1, got {alpha!r}")
    if mode is not None and mode not in ("whole", "slide"):
        raise _invalid(f"expected mode 'whole' or 'slide', got {mode!r}")
    checked_scales: tuple[float, ...] = ()
    if scales:
        try:
            checked_scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError):
            raise _invalid(f"expected scales to be numbers, got {scales!r}") from None
        if not all(math.isfinite(s) and s > 0 for s in checked_scales):
            raise _invalid(f"expected positive scales, got {list(scales)!r}")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise _invalid(f"expected max_size to be a positive integer, got {max_size!r}")
    if tta is not None and tta not in TTA_PRESETS:
        raise _invalid(f"expected tta to be one of {', '.join(TTA_PRESETS)}, got {tta!r}")
    if tta is not None and mode is not None:
        raise _invalid(f"mode applies to this project's procedure, not to tta={tta!r}; give one of them")
    sizes = {"base_size": base_size, "crop_size": crop_size, "stride": stride}
    given = [name for name, value in sizes.items() if value is not None]
    if given and tta is None:
        raise _invalid(f"{', '.join(given)} apply only with tta='official' or tta='mmseg'")
    return Options(
        format=format,
        model=model,
        alpha=None if alpha is None else float(alpha),
        mode=mode,
        scales=checked_scales,
        flip=None if flip is None else bool(flip),
        max_size=max_size,
        tta=tta,
        base_size=_sizes("base_size", base_size),
        crop_size=_sizes("crop_size", crop_size),
        stride=_sizes("stride", stride),
    )
