"""Geometry and logit arithmetic for segmentation: inference sizes, sliding windows, resizing, fusion."""

from __future__ import annotations

import math

import numpy as np

MIN_SIDE = 16  # smaller images are upscaled for inference (DANet needs >= 8 px; attention likes more)


def inference_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    """The size inference runs at: shrunk so the longest side is <= max_size, grown to at least MIN_SIDE."""
    scale = 1.0
    if max_size is not None and max(height, width) > max_size:
        scale = max_size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    if min(h, w) < MIN_SIDE:
        grow = MIN_SIDE / min(h, w)
        h, w = math.ceil(h * grow), math.ceil(w * grow)
    return h, w


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) windows covering the image; all of one size min(crop, image), last ones flush with
    the far edge (as in MMSegmentation's slide inference)."""
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    stride_h, stride_w = max(1, stride[0]), max(1, stride[1])
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y1 = min(r * stride_h + crop_h, height)
            x1 = min(c * stride_w + crop_w, width)
            windows.append((y1 - crop_h, y1, x1 - crop_w, x1))
    return windows


def _interp_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] bilinear weights, half-pixel centres (PyTorch align_corners=False, no antialias)."""
    if src == dst:
        return np.eye(dst, dtype=np.float32)
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    frac = (pos - lo).astype(np.float32)
    matrix = np.zeros((dst, src), dtype=np.float32)
    rows = np.arange(dst)
    np.add.at(matrix, (rows, lo), 1.0 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[C, h, w]`` to ``[C, *size]``."""
    channels, height, width = logits.shape
    if (height, width) == tuple(size):
        return logits.astype(np.float32, copy=False)
    ry = _interp_matrix(height, size[0])
    rx = _interp_matrix(width, size[1])
    out = np.matmul(ry[None], logits.astype(np.float32, copy=False))  # [C, H, w]
    return np.matmul(out, rx.T[None])  # [C, H, W]


def labels_and_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax class and its softmax probability from ``[C, H, W]`` logits."""
    labels = logits.argmax(axis=0)
    top = np.take_along_axis(logits, labels[None], axis=0)[0]
    denom = np.exp(logits - top[None]).sum(axis=0)
    return labels, (1.0 / denom).astype(np.float32)
