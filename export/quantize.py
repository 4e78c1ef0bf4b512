"""int8 variant: onnxruntime static quantisation (QDQ) with calibration images, for CPUs.

The convolutions are quantised (per-channel int8 weights, uint8 activations, MinMax ranges from the
calibration images); onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into an integer
convolution. Two rewrites keep the integer convolutions chained without float passes in between:

* the ReLUs are handed to the quantiser too, which removes each one behind a quantised convolution
  (its output range starts at zero). Without that, every Conv -> ReLU kept a DequantizeLinear ->
  QuantizeLinear pair (the convolution's range, then the ReLU's): 4.4 ms of the int8 default model's
  ~40 ms at 512x512, measured;
* the input normalisation ``(x - mean) * inv_std`` becomes one grouped 1x1 convolution on the uint8
  pixels cast to float, quantised with scale 1 and zero point 0 (exact for 0..255, whatever the
  calibration images hold). As a Sub and a Mul, onnxruntime moved it into the NHWC layout of the integer
  convolutions, where a broadcast over a last axis of 3 took 3.7 ms instead of ~0.6 ms.

Everything that decides a class stays float: both attention modules, the upsampling, softmax and argmax.

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

What bounds the int8 speed-up of the slim default model: the float work that int8 cannot touch without
changing the answers, the position attention's N x N energy, softmax and weighted sum (0.6 GMAC of
matmuls plus an exp over 16.8 M energies at 512x512) and the full-resolution tail (bilinear upsampling
of the logits, the confidence softmax, argmax). A per-op profile on a quiet machine (onnxruntime
profiling, 10 runs at 512x512) puts the convolutions at 38 of 61 ms (62%) and the attention at 17.6 ms,
so even 4x faster convolutions give at most 1.9x (an earlier profile said 51%: 1.6x). Measured,
interleaved in one process (fp32 / int8 before the two rewrites / int8 now, 2 x 40 rounds, 0.1 s
apart): 1.52-1.60x before, **1.66-1.71x** now (99.76% label agreement on four scenes, 99.64% before).
DANet-R50, convolution-bound: 3.13x now (2.57-2.79x before), 100% agreement. Quantising the residual
Adds, MaxPool and MatMuls as well was measured at the same speed as convolutions only (1.33-1.37x vs
1.36x, before the rewrites).

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


def normalisation_as_conv(model: onnx.ModelProto) -> str | None:
    """Rewrite the wrapper's input normalisation, ``Sub(Cast(image), mean) -> Mul(inv_std)`` with
    per-channel ``[1, 3, 1, 1]`` constants, as one grouped 1x1 Conv (in place).

    Returns the name of the Conv's input (the Cast's float pixels), or None when the graph has no such
    pattern (it is then left as it is).
    """
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def channel_constant(name: str) -> np.ndarray | None:
        if name not in constants:
            return None
        value = onnx.numpy_helper.to_array(constants[name])
        return value.reshape(3).astype(np.float64) if value.shape == (1, 3, 1, 1) else None

    for sub in graph.node:
        if sub.op_type != "Sub" or len(sub.input) != 2:
            continue
        cast = producers.get(sub.input[0])
        mean = channel_constant(sub.input[1])
        users = consumers.get(sub.output[0], [])
        if (
            cast is None
            or cast.op_type != "Cast"
            or mean is None
            or len(users) != 1
            or users[0].op_type != "Mul"
        ):
            continue
        mul = users[0]
        scale_name = mul.input[1] if mul.input[0] == sub.output[0] else mul.input[0]
        inv_std = channel_constant(scale_name)
        if inv_std is None:
            continue
        weight = onnx.numpy_helper.from_array(
            inv_std.reshape(3, 1, 1, 1).astype(np.float32), "input_normalize_w"
        )
        bias = onnx.numpy_helper.from_array((-mean * inv_std).astype(np.float32), "input_normalize_b")
        graph.initializer.extend([weight, bias])
        conv = onnx.helper.make_node(
            "Conv",
            [sub.input[0], weight.name, bias.name],
            [mul.output[0]],
            name="input_normalize",
            group=3,
            kernel_shape=[1, 1],
        )
        nodes = list(graph.node)
        nodes[nodes.index(sub)] = conv
        nodes.remove(mul)
        del graph.node[:]
        graph.node.extend(nodes)
        return str(sub.input[0])
    return None


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

    if isinstance(fp32_model, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(fp32_model)  # the rewrite below must not touch the caller's graph
    else:
        model = onnx.load(str(fp32_model))
    excluded = attention_projection_convs(model) if keep_attention_float else []
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    pixels = normalisation_as_conv(model)
    overrides: dict[str, list[dict[str, Any]]] = {}
    if pixels is not None:  # uint8 values cast to float: scale 1, zero point 0 is exact
        overrides[pixels] = [{"scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}]
    with _quiet_root_logger():
        quantize_static(
            model,
            str(output),
            _Reader(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Relu"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "TensorQuantOverrides": overrides,
            },
        )
    return {
        "quantized_convs": len(convs) - len(excluded),
        "float_convs": excluded,
        "normalisation_as_conv": pixels is not None,
        "calibration_images": len(images),
    }
