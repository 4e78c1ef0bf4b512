"""The default verification rule still catches real export bugs on a trained-scale checkpoint.

Each mutation is a classic way for an exported DANet to go wrong. Graph mutations edit the exported
ONNX file; model mutations (attention maths, a missing BN) replace one module of the PyTorch model
and run it in float32 as the candidate: the rule judges outputs, whatever produced them. Every one
must fail :data:`export.verify.DEFAULT_TOLERANCE` against the float64 truth, while the unmutated
graph passes it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from common.contract import INPUT_IMAGE
from export.onnx_export import torch_reference, torch_references
from export.verify import DEFAULT_TOLERANCE, Reference, judge, onnx_runner, run_reference
from models.checkpoints import LoadedCheckpoint, load_checkpoint

LAYOUT = "official-r50-deepstem-os8"
SHAPES = ((1, 72, 96), (1, 65, 99))


@pytest.fixture(scope="module")
def subject(realistic: Any) -> tuple[onnx.ModelProto, LoadedCheckpoint, Reference]:
    checkpoint, _, report = realistic(LAYOUT)
    loaded = load_checkpoint(checkpoint)
    truth, floor = torch_references(loaded.model, loaded.config)
    graph = onnx.load(report["artifacts"][0]["path"])
    return graph, loaded, run_reference(truth, floor, shapes=SHAPES)


# --------------------------------------------------------------------------- graph mutations
def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _set(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    _initializer(model, name).CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))


def wrong_align_corners(model: onnx.ModelProto) -> None:
    (resize,) = [node for node in model.graph.node if node.op_type == "Resize"]
    mode = next(a for a in resize.attribute if a.name == "coordinate_transformation_mode")
    assert mode.s == b"align_corners"  # the official checkpoint's upsampling
    mode.s = b"half_pixel"


def dropped_pam_gamma(model: onnx.ModelProto) -> None:
    (mul,) = [n for n in model.graph.node if n.op_type == "Mul" and "model.head.pam.gamma" in n.input]
    attended = next(name for name in mul.input if name != "model.head.pam.gamma")
    for node in model.graph.node:
        node.input[:] = [attended if name == mul.output[0] else name for name in node.input]
    model.graph.node.remove(mul)


def bgr_input(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr"))
    for node in model.graph.node:
        node.input[:] = ["image_bgr" if name == INPUT_IMAGE else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Gather", [INPUT_IMAGE, "bgr"], ["image_bgr"], axis=3))


def bgr_statistics(model: onnx.ModelProto) -> None:
    for name in ("mean", "inv_std"):
        _set(model, name, numpy_helper.to_array(_initializer(model, name))[:, ::-1])


def mean_and_std_swapped(model: onnx.ModelProto) -> None:
    mean = numpy_helper.to_array(_initializer(model, "mean"))
    inv_std = numpy_helper.to_array(_initializer(model, "inv_std"))
    _set(model, "mean", 1.0 / inv_std)
    _set(model, "inv_std", 1.0 / mean)


GRAPH_MUTATIONS: dict[str, Callable[[onnx.ModelProto], None]] = {
    "align_corners": wrong_align_corners,
    "pam_gamma_dropped": dropped_pam_gamma,
    "bgr_input": bgr_input,
    "bgr_mean_std": bgr_statistics,
    "mean_std_swapped": mean_and_std_swapped,
}


# --------------------------------------------------------------------------- model mutations
class ChannelAttentionWithoutMax(nn.Module):
    """softmax(E) instead of the official softmax(max(E) - E)."""

    def __init__(self, gamma: nn.Parameter) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, x: Tensor) -> Tensor:
        features = x.flatten(2)
        attention = torch.softmax(torch.bmm(features, features.transpose(1, 2)), dim=-1)
        return self.gamma * torch.bmm(attention, features).reshape(x.shape) + x


class PositionAttentionTransposed(nn.Module):
    """The position-attention softmax taken over the queries instead of the keys."""

    def __init__(self, pam: nn.Module) -> None:
        super().__init__()
        self.pam = pam

    def forward(self, x: Tensor) -> Tensor:
        query, key, value = self.pam._project(x)
        attention = torch.softmax(torch.bmm(query, key), dim=1)
        return self.pam.gamma * torch.bmm(value, attention.transpose(1, 2)).reshape(x.shape) + x


def _head(model: nn.Module) -> Any:
    return model.head


MODEL_MUTATIONS: dict[str, Callable[[nn.Module], None]] = {
    "cam_without_max": lambda m: setattr(_head(m), "cam", ChannelAttentionWithoutMax(_head(m).cam.gamma)),
    "pam_softmax_transposed": lambda m: setattr(_head(m), "pam", PositionAttentionTransposed(_head(m).pam)),
    "missing_bn": lambda m: _head(m).pam_out.__setitem__(1, nn.Identity()),
}


@pytest.mark.timeout(1200)  # builds the shared ResNet-50 export when this file runs first
def test_the_unmutated_graph_passes(subject: tuple[onnx.ModelProto, LoadedCheckpoint, Reference]) -> None:
    graph, _, reference = subject
    runner, provider = onnx_runner(graph)
    report = judge(runner, reference, subject="unmutated", provider=provider)
    assert report.passed, report.summary()
    assert report.logit_scale > 10


@pytest.mark.parametrize("name", list(GRAPH_MUTATIONS))
def test_graph_mutation_is_rejected(
    subject: tuple[onnx.ModelProto, LoadedCheckpoint, Reference], name: str
) -> None:
    graph, _, reference = subject
    mutated = copy.deepcopy(graph)
    GRAPH_MUTATIONS[name](mutated)
    runner, provider = onnx_runner(mutated)
    report = judge(runner, reference, tolerance=DEFAULT_TOLERANCE, subject=name, provider=provider)
    assert not report.passed, report.summary()
    assert "FAILED" in report.summary()


@pytest.mark.parametrize("name", list(MODEL_MUTATIONS))
def test_model_mutation_is_rejected(
    subject: tuple[onnx.ModelProto, LoadedCheckpoint, Reference], name: str
) -> None:
    _, loaded, reference = subject
    model = copy.deepcopy(loaded.model)
    MODEL_MUTATIONS[name](model)
    runner = torch_reference(model.eval(), loaded.config)
    report = judge(runner, reference, tolerance=DEFAULT_TOLERANCE, subject=name, provider="PyTorch")
    assert not report.passed, report.summary()
