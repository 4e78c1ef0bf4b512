"""The graph contract: tensor names, dtypes, dynamic dims, in-graph pre/post-processing, metadata."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from common.contract import (
    INPUT_IMAGE,
    META_ARCHITECTURE,
    META_CLASSES,
    META_EXPORTER_VERSION,
    META_MEAN,
    META_MODEL_NAME,
    META_PALETTE,
    META_PRECISION,
    META_PREFERRED_SIZE,
    META_SOURCE_FORMAT,
    META_SOURCE_SHA256,
    META_STD,
    OUTPUT_CONFIDENCE,
    OUTPUT_LABELS,
)
from export.metadata import read_metadata
from export.verify import make_inputs, with_logits_output
from models.config import DANetConfig
from models.synthetic import CLASSES, PALETTE

ALL_META = (
    META_CLASSES,
    META_PALETTE,
    META_ARCHITECTURE,
    META_MEAN,
    META_STD,
    META_PREFERRED_SIZE,
    META_SOURCE_FORMAT,
    META_SOURCE_SHA256,
    META_EXPORTER_VERSION,
    META_PRECISION,
    META_MODEL_NAME,
)


def _dims(value: onnx.ValueInfoProto) -> list[Any]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_names_dtypes_and_symbolic_dims(tiny_export: Any) -> None:
    model = onnx.load(str(tiny_export.output))
    (image,) = model.graph.input
    assert image.name == INPUT_IMAGE
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert _dims(image) == ["batch", "height", "width", 3]
    outputs = {value.name: value for value in model.graph.output}
    assert list(outputs) == [OUTPUT_LABELS, OUTPUT_CONFIDENCE]  # no logits unless asked for
    assert outputs[OUTPUT_LABELS].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert outputs[OUTPUT_CONFIDENCE].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for value in outputs.values():
        assert _dims(value) == ["batch", "height", "width"]
    assert tiny_export.outputs == [OUTPUT_LABELS, OUTPUT_CONFIDENCE]


def test_file_has_ordinary_permissions(tiny_export: Any) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    assert tiny_export.output.stat().st_mode & 0o777 == 0o666 & ~mask


def test_metadata_is_complete_json(tiny_export: Any, tiny_loaded: Any) -> None:
    model = onnx.load(str(tiny_export.output))
    raw = {entry.key: entry.value for entry in model.metadata_props}
    assert set(ALL_META) <= set(raw)
    for key in ALL_META:
        json.loads(raw[key])  # every value is JSON text
    meta = read_metadata(model)
    assert meta[META_CLASSES] == list(CLASSES)
    assert meta[META_PALETTE] == [list(rgb) for rgb in PALETTE]
    assert DANetConfig.from_dict(meta[META_ARCHITECTURE]) == tiny_loaded.config
    assert meta[META_MEAN] == list(tiny_loaded.config.mean)
    assert meta[META_STD] == list(tiny_loaded.config.std)
    assert meta[META_PREFERRED_SIZE] == [96, 128]
    assert meta[META_SOURCE_FORMAT] == "danet-serve"
    assert meta[META_SOURCE_SHA256] == tiny_loaded.sha256 and len(meta[META_SOURCE_SHA256]) == 64
    assert meta[META_PRECISION] == "fp32"
    assert meta[META_MODEL_NAME] == "tiny"
    assert "danet-serve" in meta[META_EXPORTER_VERSION] and "opset 20" in meta[META_EXPORTER_VERSION]


@pytest.mark.parametrize(
    "shape",
    [(1, 64, 64), (3, 40, 72), (1, 97, 131), (1, 8, 8), (2, 130, 33)],
    ids=["square", "batch3", "odd", "minimum", "tall"],
)
def test_dynamic_sizes_run_at_input_resolution(tiny_export: Any, shape: tuple[int, int, int]) -> None:
    model = with_logits_output(onnx.load(str(tiny_export.output)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(1).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    labels, confidence, logits = session.run(None, {INPUT_IMAGE: batch})
    assert labels.shape == confidence.shape == shape
    assert labels.dtype == np.uint8 and confidence.dtype == np.float32 and logits.dtype == np.float32
    assert logits.shape == (shape[0], len(CLASSES), shape[1], shape[2])
    # argmax and max-softmax are computed in the graph from the very logits it exposes
    np.testing.assert_array_equal(labels, logits.argmax(axis=1))
    softmax = torch.softmax(torch.from_numpy(logits), dim=1).amax(dim=1).numpy()
    np.testing.assert_allclose(confidence, softmax, atol=1e-6)
    assert confidence.min() >= 1 / len(CLASSES) - 1e-6 and confidence.max() <= 1 + 1e-6


def test_graph_matches_pytorch_on_normalised_input(tiny_export: Any, tiny_loaded: Any) -> None:
    """Normalisation is in the graph: raw uint8 in ONNX == the model on (x - mean) / std."""
    model = with_logits_output(onnx.load(str(tiny_export.output)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (batch,) = make_inputs([(1, 72, 88)], seed=5)
    _, _, logits = session.run(None, {INPUT_IMAGE: batch})
    config = tiny_loaded.config
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(config.mean).view(1, 3, 1, 1)) / torch.tensor(config.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tiny_loaded.model(x).numpy()
    assert np.abs(expected).max() > 0.05  # a degenerate model would prove nothing
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_no_size_is_frozen_in_the_graph(tiny_export: Any) -> None:
    """The trace example was 64x80: no Resize target or Reshape shape may hold those sizes."""
    model = onnx.load(str(tiny_export.output))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    constants = {
        node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
        for node in model.graph.node
        if node.op_type == "Constant"
        and node.attribute
        and node.attribute[0].type == onnx.AttributeProto.TENSOR
    }
    values = {**initializers, **constants}
    for node in model.graph.node:
        if node.op_type in {"Resize", "Reshape", "Expand", "Slice", "Pad"}:
            for name in node.input[1:]:
                array = values.get(name)
                if array is not None and array.dtype == np.int64:
                    frozen = {64, 80, 8, 10, 640}.intersection(int(v) for v in array.ravel())
                    assert not frozen, f"{node.op_type} {node.name} has constant sizes {array}"
    assert sum(node.op_type == "Scan" for node in model.graph.node) == 1  # the bounded attention
