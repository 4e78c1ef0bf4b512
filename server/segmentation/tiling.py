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
        if max_size is not None:  # a sliver (e.g. 1000x3): the cap wins over the aspect ratio
            h, w = min(h, max(max_size, MIN_SIDE)), min(w, max(max_size, MIN_SIDE))
    return h, w


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


def slide_grid(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int, tuple[int, int]]:
    """(rows, columns, window size) of the windows ``slide_windows`` lists; cost checks count with it."""
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    stride_h, stride_w = max(1, stride[0]), max(1, stride[1])
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    return rows, cols, (crop_h, crop_w)


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) windows covering the image; all of one size min(crop, image), last ones flush with
    the far edge (as in MMSegmentation's slide inference)."""
    rows, cols, (crop_h, crop_w) = slide_grid(height, width, crop, stride)
    stride_h, stride_w = max(1, stride[0]), max(1, stride[1])
    windows = []
    for r in range(rows):
        for c in range(cols):
            y1 = min(r * stride_h + crop_h, height)
            x1 = min(c * stride_w + crop_w, width)
            windows.append((y1 - crop_h, y1, x1 - crop_w, x1))
    return windows


def official_grid(height: int, width: int, crop: int, stride: int) -> tuple[tuple[int, int], int, int]:
    """(canvas size, rows, columns) of PyTorch-Encoding's MultiEvalModule windows on a ``height x width``
    picture: one window when it fits the crop, else the picture padded to at least the crop and cut every
    ``stride`` pixels; each window is padded to a full crop before it runs."""
    if max(height, width) <= crop:
        return (height, width), 1, 1
    ph, pw = (max(height, crop), max(width, crop)) if min(height, width) < crop else (height, width)
    return (ph, pw), math.ceil((ph - crop) / stride) + 1, math.ceil((pw - crop) / stride) + 1


def _interp_matrix(src: int, dst: int, align_corners: bool = False) -> np.ndarray:
    """[dst, src] bilinear weights as PyTorch's ``F.interpolate(mode="bilinear", antialias=False)``:
    half-pixel centres clamped at the borders (``align_corners=False``, also OpenCV's INTER_LINEAR), or
    corner pixels aligned (``align_corners=True``)."""
    if src == dst:
        return np.eye(dst, dtype=np.float32)
    if align_corners:
        step = (src - 1) / (dst - 1) if dst > 1 else 0.0
        pos = np.arange(dst, dtype=np.float64) * step
    else:
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


def resize_logits(logits: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """Bilinear resize of ``[C, h, w]`` to ``[C, *size]``."""
    channels, height, width = logits.shape
    if (height, width) == tuple(size):
        return logits.astype(np.float32, copy=False)
    ry = _interp_matrix(height, size[0], align_corners)
    rx = _interp_matrix(width, size[1], align_corners)
    out = np.matmul(ry[None], logits.astype(np.float32, copy=False))  # [C, H, w]
    return np.matmul(out, rx.T[None])  # [C, H, W]


def resize_image(image: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """Bilinear resize of a uint8 ``[h, w, 3]`` image in float, rounded back to uint8 (no antialiasing).

    The procedures that resize normalised float images differ from this only by that final rounding:
    bilinear weights sum to one, so resizing commutes with the per-channel normalisation in the graph."""
    height, width = image.shape[:2]
    if (height, width) == tuple(size):
        return image
    ry = _interp_matrix(height, size[0], align_corners)
    rx = _interp_matrix(width, size[1], align_corners)
    rows = np.matmul(ry, image.reshape(height, -1).astype(np.float32)).reshape(size[0], width, 3)
    out = np.matmul(rx[None], rows)  # [H, W, 3]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def labels_and_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax class and its softmax probability from ``[C, H, W]`` logits."""
    labels = logits.argmax(axis=0)
    top = np.take_along_axis(logits, labels[None], axis=0)[0]
    denom = np.exp(logits - top[None]).sum(axis=0)
    return labels, (1.0 / denom).astype(np.float32)
