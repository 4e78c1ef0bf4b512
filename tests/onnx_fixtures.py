"""Tiny contract-conforming ONNX graphs for server/client tests (built with onnx.helper, no torch).

The graph is a per-pixel linear classifier over RGB: image uint8 [N,H,W,3] -> float /255 -> MatMul [3,C]
+ bias -> logits [N,C,H,W]; labels = ArgMax over C; confidence = max softmax. Because it is per-pixel,
whole-image, sliding-window and flipped inference give the same labels, which tests can rely on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.contract import (
    INPUT_IMAGE,
    META_CLASSES,
    META_MEAN,
    META_MODEL_NAME,
    META_PALETTE,
    META_PREFERRED_SIZE,
    META_STD,
    OUTPUT_CONFIDENCE,
    OUTPUT_LABELS,
    OUTPUT_LOGITS,
)

RGB_CLASSES = ["background", "red", "green", "blue"]
RGB_PALETTE = [(0, 0, 0), (220, 20, 60), (0, 200, 0), (30, 60, 255)]
# columns: background (constant 0.25 via bias), red, green, blue dominance
RGB_WEIGHTS = np.array(
    [[0.0, 1.0, -0.5, -0.5], [0.0, -0.5, 1.0, -0.5], [0.0, -0.5, -0.5, 1.0]], dtype=np.float32
)
RGB_BIAS = np.array([0.25, 0.0, 0.0, 0.0], dtype=np.float32)


def reference_logits(
    images: np.ndarray, weights: np.ndarray = RGB_WEIGHTS, bias: np.ndarray = RGB_BIAS
) -> np.ndarray:
    """NumPy twin of the graph: [N,H,W,3] uint8 -> [N,C,H,W] float32."""
    x = images.astype(np.float32) / 255.0
    return np.transpose(x @ weights + bias, (0, 3, 1, 2))


def build_model(
    *,
    classes: Sequence[str] = RGB_CLASSES,
    palette: Sequence[Sequence[int]] | None = RGB_PALETTE,
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    logits: bool = True,
    confidence: bool = True,
    model_name: str | None = None,
    preferred_size: tuple[int, int] | None = (32, 32),
    input_name: str = INPUT_IMAGE,
    include_classes: bool = True,
) -> onnx.ModelProto:
    num = len(classes)
    if weights is None:
        if num == len(RGB_CLASSES):
            weights, bias = RGB_WEIGHTS, RGB_BIAS
        else:
            rng = np.random.default_rng(num)
            weights = rng.normal(size=(3, num)).astype(np.float32)
            bias = rng.normal(size=(num,)).astype(np.float32)
    assert bias is not None
    label_type = TensorProto.UINT8 if num <= 256 else TensorProto.UINT16
    nodes = [
        helper.make_node("Cast", [input_name], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x_f", "scale"], ["x_n"]),
        helper.make_node("MatMul", ["x_n", "w"], ["x_w"]),
        helper.make_node("Add", ["x_w", "b"], ["nhwc"]),
        helper.make_node(
            "Transpose", ["nhwc"], [OUTPUT_LOGITS if logits else "logits_internal"], perm=[0, 3, 1, 2]
        ),
    ]
    logit_name = OUTPUT_LOGITS if logits else "logits_internal"
    nodes += [
        helper.make_node("ArgMax", [logit_name], ["am"], axis=1, keepdims=0),
        helper.make_node("Cast", ["am"], [OUTPUT_LABELS], to=label_type),
    ]
    if confidence:
        nodes += [
            helper.make_node("Softmax", [logit_name], ["prob"], axis=1),
            helper.make_node("ReduceMax", ["prob"], [OUTPUT_CONFIDENCE], keepdims=0, axes=[1]),
        ]
    inits = [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.asarray(weights, dtype=np.float32), "w"),
        numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "b"),
    ]
    outputs = [helper.make_tensor_value_info(OUTPUT_LABELS, label_type, ["N", "H", "W"])]
    if confidence:
        outputs.append(helper.make_tensor_value_info(OUTPUT_CONFIDENCE, TensorProto.FLOAT, ["N", "H", "W"]))
    if logits:
        outputs.append(helper.make_tensor_value_info(OUTPUT_LOGITS, TensorProto.FLOAT, ["N", num, "H", "W"]))
    graph = helper.make_graph(
        nodes,
        "tiny_segmenter",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["N", "H", "W", 3])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta: dict[str, object] = {META_MEAN: [0.0, 0.0, 0.0], META_STD: [255.0, 255.0, 255.0]}
    if include_classes:
        meta[META_CLASSES] = list(classes)
    if palette is not None:
        meta[META_PALETTE] = [list(c) for c in palette]
    if preferred_size is not None:
        meta[META_PREFERRED_SIZE] = list(preferred_size)
    if model_name is not None:
        meta[META_MODEL_NAME] = model_name
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    return model


def write_model(path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_model(**kwargs), str(path))  # type: ignore[arg-type]
    return path
