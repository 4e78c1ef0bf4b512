"""Benchmark inputs: street-like scenes (the default model's domain) or a deterministic pattern."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def bench_image(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """A uint8 [H, W, 3] RGB image to segment.

    Uses the procedural scene generator of the default model when it is importable (so that int8/fp32
    agreement is measured on the kind of image the model was trained for), else a smooth pattern
    with noise (deterministic in ``seed``).
    """
    if height >= 16 and width >= 16:
        try:
            from models.synthetic import generate_scene
        except ImportError:
            pass
        else:
            image, _ = generate_scene(seed, height, width)
            return np.ascontiguousarray(image, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(xx / max(width, 1) * 6.0),
            128 + 100 * np.cos(yy / max(height, 1) * 4.0),
            128 + 60 * np.sin((xx + yy) / max(height + width, 1) * 9.0),
        ],
        axis=-1,
    )
    noise = rng.normal(0.0, 12.0, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


IMAGE_KINDS = ("scene", "noise")


def test_image(kind: str, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """``scene``: :func:`bench_image` (photo-like: smooth regions, edges, texture); ``noise``: uniform
    random pixels (the worst case for PNG and JPEG codecs)."""
    if kind == "scene":
        return bench_image(height, width, seed=seed)
    if kind == "noise":
        return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    raise ValueError(f"test image kinds are {', '.join(IMAGE_KINDS)}; got {kind!r}")


def upload(image: np.ndarray, fmt: str) -> tuple[bytes, np.ndarray]:
    """The file a client uploads (``png``, or ``jpeg`` at quality 90, what cameras and browsers send) and the
    pixels it decodes to, which the in-process paths then get, so that every path sees the same pixels."""
    if fmt == "png":
        return encode(image), image
    if fmt == "jpeg":
        data = encode(image, "JPEG", quality=90)
        with Image.open(io.BytesIO(data)) as img:
            return data, np.ascontiguousarray(np.asarray(img.convert("RGB")))
    raise ValueError(f"upload formats are png and jpeg; got {fmt!r}")


def encode(image: np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    """Encode an RGB array as an image file (PNG by default: lossless, what the server must decode)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Decode an image file to an array (mode preserved: 'L'/'I;16' label maps come back 2-D)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)
