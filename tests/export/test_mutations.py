"""The default verification rule still catches real export bugs on trained-scale checkpoints.

Each mutation is a classic way for an exported DANet to go wrong. Graph mutations edit the exported
ONNX file and go through the whole default verification (:func:`export.verify.verify_graph`, the
mutated graph's own unoptimised onnxruntime run included in the floor); model mutations (attention
maths, a missing BN, a BN epsilon, a shifted resize) replace part of the PyTorch model and run it
in float32 as the candidate: the rule judges outputs, whatever produced them. Every one must fail
:data:`export.verify.DEFAULT_TOLERANCE` against the float64 truth, with the float32 spread of
:func:`export.floor.torch_references` as the floor, while the unmutated graph passes it.
The same mutations run on one checkpoint of every layout at the largest logit scale of the matrix
in ``tests/export/test_floor_matrix.py`` (``-m matrix``).

Neither subtle one falls inside float32 noise. Measured on the matrix's small shapes (official R50
deep stem OS8 seed 0 with logits scaled to 600, max |logit| 541 / MMSeg R50-V1c seed 1 scaled to 20,
max |logit| 13.2; float32 spread 1.1e-3 to 2.0e-3 / 2.8e-5 to 3.9e-5; default bound 0.54 / 0.013):
``bn_eps_1e-3`` (every BN with epsilon 1e-3 instead of 1e-5) max |dlogit| 15.9 / 0.351 (2.9% / 2.7%
of max |logit|, 29x / 26x the bound, agreement 97.3% / 97.4%); ``resize_half_pixel`` (the final
bilinear upsampling sampled half an output pixel off) 46.4 / 1.18 (8.6% / 8.9%, 91.6% / 91.1%).
The table for every mutation: export/README.md, "Verification".
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
from torch.nn import functional as F

from common.contract import INPUT_IMAGE
from export.floor import torch_reference, torch_references
from export.verify import (
    DEFAULT_TOLERANCE,
    Reference,
    VerificationError,
    VerificationReport,
    judge,
    run_reference,
    verify_graph,
)
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
    """The other ``align_corners`` (official checkpoints: True, MMSegmentation: False)."""
    (resize,) = [node for node in model.graph.node if node.op_type == "Resize"]
    mode = next(a for a in resize.attribute if a.name == "coordinate_transformation_mode")
    assert mode.s in (b"align_corners", b"half_pixel")
    mode.s = b"half_pixel" if mode.s == b"align_corners" else b"align_corners"


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


def bn_epsilon(model: nn.Module, eps: float = 1e-3) -> None:
    """Every BatchNorm with epsilon 1e-3 (Keras/TensorFlow's default) instead of PyTorch's 1e-5."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = eps


def upsample(logits: Tensor, size: tuple[int, int], align_corners: bool, shift: float) -> Tensor:
    """Bilinear resize of ``logits`` to ``size`` whose samples sit ``shift`` output pixels off.

    ``shift=0`` is exactly ``F.interpolate(mode="bilinear")`` (checked by a test); the sample grid
    of ``grid_sample`` is the resize's, moved by ``shift`` output pixels along both axes.
    """

    def axis(out: int) -> Tensor:
        index = torch.arange(out, dtype=logits.dtype) + shift
        if align_corners:
            return 2 * index / max(out - 1, 1) - 1
        return (2 * index + 1) / out - 1

    ys, xs = torch.meshgrid(axis(size[0]), axis(size[1]), indexing="ij")
    grid = torch.stack((xs, ys), dim=-1).unsqueeze(0).expand(logits.shape[0], -1, -1, -1)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=align_corners)


def resized_off(model: nn.Module, shift: float = 0.5) -> None:
    """The final bilinear upsampling sampled ``shift`` (half an) output pixel(s) off."""

    def forward(x: Tensor) -> Tensor:
        low = model.head(model.backbone(x))[0]
        return upsample(low, (x.shape[-2], x.shape[-1]), model.config.align_corners, shift)

    model.forward = forward  # type: ignore[method-assign]


MODEL_MUTATIONS: dict[str, Callable[[nn.Module], None]] = {
    "cam_without_max": lambda m: setattr(_head(m), "cam", ChannelAttentionWithoutMax(_head(m).cam.gamma)),
    "pam_softmax_transposed": lambda m: setattr(_head(m), "pam", PositionAttentionTransposed(_head(m).pam)),
    "missing_bn": lambda m: _head(m).pam_out.__setitem__(1, nn.Identity()),
    "bn_eps_1e-3": bn_epsilon,
    "resize_half_pixel": resized_off,
}


def graph_mutation_report(graph: onnx.ModelProto, reference: Reference, name: str) -> VerificationReport:
    """The default verification of the mutated graph (the report of its VerificationError)."""
    mutated = copy.deepcopy(graph)
    GRAPH_MUTATIONS[name](mutated)
    with pytest.raises(VerificationError) as caught:
        verify_graph(mutated, reference, subject=name)
    report = caught.value.report
    assert report is not None and not report.passed and "FAILED" in report.summary()
    return report


def model_mutation_report(loaded: LoadedCheckpoint, reference: Reference, name: str) -> VerificationReport:
    """The mutated float32 PyTorch model judged with the default rule (must not pass)."""
    model = copy.deepcopy(loaded.model)
    MODEL_MUTATIONS[name](model)
    runner = torch_reference(model.eval(), loaded.config)
    report = judge(runner, reference, tolerance=DEFAULT_TOLERANCE, subject=name, provider="PyTorch")
    assert not report.passed, report.summary()
    return report


@pytest.mark.timeout(1200)  # builds the shared ResNet-50 export when this file runs first
def test_the_unmutated_graph_passes(subject: tuple[onnx.ModelProto, LoadedCheckpoint, Reference]) -> None:
    graph, _, reference = subject
    report = verify_graph(graph, reference, subject="unmutated")
    assert report.passed, report.summary()
    assert report.logit_scale > 10


@pytest.mark.parametrize("name", list(GRAPH_MUTATIONS))
def test_graph_mutation_is_rejected(
    subject: tuple[onnx.ModelProto, LoadedCheckpoint, Reference], name: str
) -> None:
    graph, _, reference = subject
    report = graph_mutation_report(graph, reference, name)
    print(report.summary())


@pytest.mark.parametrize("name", list(MODEL_MUTATIONS))
def test_model_mutation_is_rejected(
    subject: tuple[onnx.ModelProto, LoadedCheckpoint, Reference], name: str
) -> None:
    _, loaded, reference = subject
    report = model_mutation_report(loaded, reference, name)
    print(report.summary())


@pytest.mark.parametrize("align_corners", [True, False])
def test_the_shifted_resize_is_a_resize_when_not_shifted(align_corners: bool) -> None:
    """``upsample(shift=0)`` is F.interpolate, so ``resize_half_pixel`` differs by the shift alone."""
    logits = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    expected = F.interpolate(logits, size=(53, 67), mode="bilinear", align_corners=align_corners)
    assert torch.allclose(upsample(logits, (53, 67), align_corners, 0.0), expected, atol=1e-12)
    assert not torch.allclose(upsample(logits, (53, 67), align_corners, 0.5), expected, atol=1e-3)
