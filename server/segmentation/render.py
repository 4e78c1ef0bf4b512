"""One renderer for every front door: colour, index and overlay PNGs, per-class statistics, JSON summary.

CPU work (PNG encoding, counting): callers run these off the event loop (on ``Engine.codecs``). REST and gRPC
get identical bytes for the same result and options.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from server import imaging
from server.model import ModelInfo
from server.segmentation.options import SegmentOptions
from server.segmentation.pipeline import SegmentResult

DEFAULT_ALPHA = 0.5


def index_png(labels: np.ndarray) -> bytes:
    """Class ids: 8-bit grey PNG (16-bit above 256 classes)."""
    return imaging.encode_png(labels)


def color_png(labels: np.ndarray, info: ModelInfo) -> bytes:
    """Palette PNG when the ids fit one (uint8, at most 256 colours), RGB otherwise."""
    if labels.dtype == np.uint8 and len(info.palette) <= 256:
        return imaging.encode_png(labels, palette=info.palette)
    return imaging.encode_png(imaging.colorize(labels, info.palette))


def overlay_png(
    image: np.ndarray, labels: np.ndarray, info: ModelInfo, alpha: float = DEFAULT_ALPHA
) -> bytes:
    return imaging.encode_png(imaging.overlay(image, labels, info.palette, alpha), level=1)


def class_statistics(result: SegmentResult, *, rle: bool = False) -> list[dict[str, Any]]:
    """Per class present: id, name, pixels, fraction, mean confidence (when known) and optionally RLE."""
    labels, confidence = result.labels, result.confidence
    stats = imaging.class_stats(labels, result.info.classes)
    for entry in stats:
        mask = labels == entry["id"]
        if confidence is not None:
            entry["mean_confidence"] = float(confidence[mask].mean())
        if rle:
            entry["rle"] = imaging.rle_encode(mask)
    return stats


def summary(result: SegmentResult, options: SegmentOptions, *, rle: bool = False) -> dict[str, Any]:
    """The JSON answer of ``format=json``."""
    labels, info = result.labels, result.info
    stats = class_statistics(result, rle=rle)
    for entry in stats:
        if "mean_confidence" in entry:
            entry["mean_confidence"] = round(entry["mean_confidence"], 6)
    payload: dict[str, Any] = {
        "model": result.model,
        "version": result.version,
        "provider": result.provider,
        "width": int(labels.shape[1]),
        "height": int(labels.shape[0]),
        "inference_size": list(result.inference_size),
        "mode": options.mode,
        "scales": list(options.scales),
        "flip": options.use_flip,
        "num_classes": info.num_classes,
        "classes": stats,
    }
    if result.preset is not None:
        payload["tta"] = result.preset
    if result.confidence is not None:
        payload["mean_confidence"] = round(float(result.confidence.mean()), 6)
    return payload


def render(
    fmt: str, image: np.ndarray, result: SegmentResult, options: SegmentOptions, *, alpha: float, rle: bool
) -> tuple[bytes | dict[str, Any], str]:
    """``format`` of ``POST /segment`` -> (body, media type)."""
    if fmt == "index":
        return index_png(result.labels), "image/png"
    if fmt == "color":
        return color_png(result.labels, result.info), "image/png"
    if fmt == "overlay":
        return overlay_png(image, result.labels, result.info, alpha), "image/png"
    return summary(result, options, rle=rle), "application/json"
