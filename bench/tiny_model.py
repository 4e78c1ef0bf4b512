"""A tiny segmentation ONNX that follows the danet-serve contract, built with ``onnx.helper``.

It is not DANet: a short stack of 3x3 convolutions with random (seeded) weights between the contract's
input and outputs. It exists so that the harness, the load tests and the fault tests can drive a real
server quickly; ``layers`` and ``channels`` set how much work one pixel costs. Needs ``onnx`` (the
``export`` extra), not torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common import contract

TINY_CLASSES = ("background", "thing", "stuff", "edge")
TINY_PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25))


def build_tiny_model(
    path: Path,
    *,
    layers: int = 1,
    channels: int = 8,
    num_classes: int = len(TINY_CLASSES),
    logits: bool = False,
    seed: int = 0,
    name: str = "tiny",
    preferred_size: tuple[int, int] = (64, 64),
) -> Path:
    """Write the model to ``path`` and return it. ``layers`` conv+ReLU blocks of ``channels`` channels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if layers < 0 or channels < 1 or num_classes < 2:
        raise ValueError(
            f"need layers >= 0, channels >= 1, num_classes >= 2; got {layers}, {channels}, {num_classes}"
        )
    classes = [TINY_CLASSES[i] if i < len(TINY_CLASSES) else f"class{i}" for i in range(num_classes)]
    palette = [list(TINY_PALETTE[i % len(TINY_PALETTE)]) for i in range(num_classes)]
    rng = np.random.default_rng(seed)
    mean = np.array([123.675, 116.28, 103.53], np.float32).reshape(1, 3, 1, 1)
    std = np.array([58.395, 57.12, 57.375], np.float32).reshape(1, 3, 1, 1)

    inits = [numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(std, "std")]
    nodes = [
        helper.make_node("Cast", [contract.INPUT_IMAGE], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["image_f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["nchw", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["x0"]),
    ]
    current, width = "x0", 3
    for i in range(layers):
        w = rng.normal(0, (2.0 / (9 * width)) ** 0.5, (channels, width, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, channels).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"]),
        ]
        current, width = f"x{i + 1}", channels
    w = rng.normal(0, 1.0 / width**0.5, (num_classes, width, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.1, num_classes).astype(np.float32)
    inits += [numpy_helper.from_array(w, "w_cls"), numpy_helper.from_array(b, "b_cls")]
    logits_name = contract.OUTPUT_LOGITS if logits else "logits_internal"
    label_type = TensorProto.UINT8 if num_classes <= 256 else TensorProto.UINT16
    nodes += [
        helper.make_node("Conv", [current, "w_cls", "b_cls"], [logits_name]),
        helper.make_node("Softmax", [logits_name], ["probs"], axis=1),
        helper.make_node("ReduceMax", ["probs"], [contract.OUTPUT_CONFIDENCE], axes=[1], keepdims=0),
        helper.make_node("ArgMax", [logits_name], ["argmax"], axis=1, keepdims=0),
        helper.make_node("Cast", ["argmax"], [contract.OUTPUT_LABELS], to=label_type),
    ]
    dims = ["batch", "height", "width"]
    outputs = [
        helper.make_tensor_value_info(contract.OUTPUT_LABELS, label_type, dims),
        helper.make_tensor_value_info(contract.OUTPUT_CONFIDENCE, TensorProto.FLOAT, dims),
    ]
    if logits:
        outputs.append(
            helper.make_tensor_value_info(
                contract.OUTPUT_LOGITS, TensorProto.FLOAT, ["batch", num_classes, "height", "width"]
            )
        )
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(contract.INPUT_IMAGE, TensorProto.UINT8, [*dims, 3])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="danet-bench")
    model.ir_version = 8
    metadata = {
        contract.META_CLASSES: classes,
        contract.META_PALETTE: palette,
        contract.META_ARCHITECTURE: {"kind": "tiny-conv", "layers": layers, "channels": channels},
        contract.META_MEAN: mean.ravel().tolist(),
        contract.META_STD: std.ravel().tolist(),
        contract.META_PREFERRED_SIZE: list(preferred_size),
        contract.META_SOURCE_FORMAT: "danet-serve",
        contract.META_SOURCE_SHA256: "0" * 64,
        contract.META_EXPORTER_VERSION: "bench.tiny_model",
        contract.META_PRECISION: "fp32",
        contract.META_MODEL_NAME: name,
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
