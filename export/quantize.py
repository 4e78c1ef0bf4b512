"""int8 variant: onnxruntime static quantisation (QDQ) with calibration images, for CPUs.

Only the convolutions are quantised (per-channel int8 weights, uint8 activations, MinMax ranges from
the calibration images); onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into an
integer convolution. Everything that decides a class stays float: normalisation, both attention
modules, the upsampling, softmax and argmax.

The position attention's query/key/value projections stay float too. Quantising them makes onnxruntime
1.31 abort at session creation (``stl_vector.h: Assertion '__n < this->size()' failed``). The cause,
narrowed down by disabling graph transformers one by one: ``QDQPropagationTransformer`` (optimisation
level basic and up) moves the DequantizeLinear after the key/value projections forward across the
Reshape/Transpose behind them, and the outputs of those nodes are *implicit* inputs of the attention's
``Scan`` subgraph; rewiring that consumer indexes its explicit inputs with the implicit input's slot.
With that one transformer disabled (``disabled_optimizers=["QDQPropagationTransformer"]``) the fully
quantised default model loads and agrees with fp32 on 99.78% of the pixels, but it is not faster: the
three projections are 0.14% of the default model's convolution work (5 of 3,881 MMACs at 512x512), so
they are left float rather than asking every consumer (Triton included) for a session option.

What bounds the int8 speed-up of the slim default model (measured 1.3-1.5x against fp32, interleaved,
at 512x512): convolutions are about half of its fp32 time; the rest is float work that int8 cannot
touch without changing the answers: the position attention's N x N energy, softmax and weighted sum
(0.6 GMAC of matmuls plus an exp over 16.8 M energies at 512x512) and the full-resolution tail
(bilinear upsampling of the logits, the confidence softmax, argmax). Even 4x faster convolutions give
at most 1 / (0.51 + 0.49 / 4) = 1.6x. A later per-op profile on a quiet machine (onnxruntime
profiling, 10 runs) put the convolutions at 38 of 61 ms (62%), the attention at 17.6 ms: at most 1.9x.
Quantising the residual Adds, MaxPool and MatMuls as well was
measured at the same speed (1.33-1.37x vs 1.36x). Deep backbones (DANet-R50) are convolution-bound
and reach 2.8x.

Calibration images: a directory of pictures (``--calibration DIR``), else procedural street scenes
from :mod:`models.synthetic`, else mean-coloured images with noise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from common.contract import INPUT_IMAGE

__all__ = [
    "CalibrationError",
    "attention_projection_convs",
    "calibration_images",
    "quantize_int8",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
#: Calibration images are shrunk so that their longer side is at most this (speed; ranges are
#: per-tensor statistics that barely depend on the resolution).
MAX_CALIBRATION_SIDE = 512


class CalibrationError(Exception):
    """No usable calibration images."""


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    from PIL import Image

    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _from_directory(directory: Path, count: int) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    if not directory.is_dir():
        raise CalibrationError(f"calibration directory {directory} does not exist or is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    images = []
    for path in files[:count]:
        try:
            with Image.open(path) as handle:
                rgb = np.asarray(handle.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            logger.warning("skipping calibration file %s: %s", path, exc)
            continue
        if min(rgb.shape[:2]) >= 8:
            images.append(_fit(rgb, MAX_CALIBRATION_SIDE))
    if not images:
        raise CalibrationError(
            f"no readable images of at least 8x8 pixels in {directory} "
            f"(looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return images


def calibration_images(
    directory: Path | None,
    *,
    count: int = 16,
    size: tuple[int, int] = (256, 256),
    mean: Sequence[float] = (123.675, 116.28, 103.53),
    seed: int = 0,
) -> list[np.ndarray]:
    """uint8 [H, W, 3] images: from ``directory``, else generated scenes of ``size``."""
    if count < 1:
        raise CalibrationError(f"need at least one calibration image, got count={count}")
    if directory is not None:
        return _from_directory(directory, count)
    height, width = size
    try:
        from models.synthetic import generate_scene

        return [generate_scene(seed, height, width, index=i, stream=1)[0] for i in range(count)]
    except (ImportError, ValueError):
        rng = np.random.default_rng(seed)
        base = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        return [
            np.clip(base + rng.normal(0, 40, size=(height, width, 3)), 0, 255).astype(np.uint8)
            for _ in range(count)
        ]


class _Reader:
    """onnxruntime CalibrationDataReader over a list of images (one image per batch)."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self._images = list(images)
        self._iterator: Iterator[np.ndarray] = iter(self._images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iterator, None)
        return None if image is None else {INPUT_IMAGE: image[np.newaxis].astype(np.uint8)}

    def rewind(self) -> None:
        self._iterator = iter(self._images)


def _outer_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scope."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                used |= _outer_inputs(attribute.g)
        defined.update(node.output)
    return used - defined


def attention_projection_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose outputs reach a Scan (the position attention's q/k/v)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    found: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Scan":
            continue
        pending = [name for name in node.input if name]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                pending += sorted(_outer_inputs(attribute.g))
        while pending:
            name = pending.pop()
            if name in seen or name not in producers:
                continue
            seen.add(name)
            producer = producers[name]
            if producer.op_type == "Conv":
                found.append(producer.name)
            else:
                pending.extend(i for i in producer.input if i)
    return sorted(set(found))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger; keep it for --debug."""
    root = logging.getLogger()
    level = root.level
    if level != logging.DEBUG:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    fp32_model: onnx.ModelProto | Path,
    output: Path,
    images: Sequence[np.ndarray],
    *,
    keep_attention_float: bool = True,
) -> dict[str, Any]:
    """Write the QDQ int8 version of ``fp32_model`` to ``output``; returns what was quantised."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = fp32_model if isinstance(fp32_model, onnx.ModelProto) else onnx.load(str(fp32_model))
    excluded = attention_projection_convs(model) if keep_attention_float else []
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    with _quiet_root_logger():
        quantize_static(
            model,
            str(output),
            _Reader(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return {
        "quantized_convs": len(convs) - len(excluded),
        "float_convs": excluded,
        "calibration_images": len(images),
    }
