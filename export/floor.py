"""The truth and the float32 noise floor that every fp32 export is judged against.

The truth is the PyTorch model converted to float64. The noise floor is not one float32 run but the
**spread of several legitimate float32 computations of the same network**, each compared with the
truth (:func:`float32_computations`):

* ``PyTorch float32``: the model as it is, with PyTorch's default CPU kernels (oneDNN);
* ``PyTorch float32, oneDNN off``: the same model through PyTorch's native kernels;
* ``PyTorch float32, BN folded``: every BatchNorm folded into the convolution before it, in float32,
  as the ONNX exporter does (the shipped graph carries folded weights, a rounding PyTorch never does);
* ``PyTorch float32, N thread(s)``: a different intra-op thread count (other blocking and
  accumulation orders).

:mod:`export.verify` adds one more from the candidate graph itself: onnxruntime with all graph
optimisations against onnxruntime with none (its distance to the candidate, not to the truth, since
a bug in the graph would be in both). One float32 run is a single sample of float32 arithmetic and can
be several times closer to float64 than another legitimate one (an MMSeg R50-V1c: 0.0129 against onnxruntime's
0.0697); the spread of these computations is what the rule is relative to. Measurements behind the
choice (and why a one-grey-level input perturbation is reported but not part of the floor):
export/README.md, "Verification".
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from common.contract import OUTPUT_CONFIDENCE, OUTPUT_LABELS, OUTPUT_LOGITS
from export.wrapper import SegmentationWrapper

__all__ = [
    "Runner",
    "conv_bn_pairs",
    "float32_computations",
    "fold_batchnorm",
    "torch_reference",
    "torch_references",
]

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]

#: Name of the plain float32 computation (always the first of :func:`float32_computations`).
PLAIN = "PyTorch float32"


def torch_reference(model: nn.Module, config: Any, dtype: torch.dtype = torch.float32) -> Runner:
    """The eager PyTorch counterpart of the graph (the model's own chunked attention).

    ``dtype`` float64 runs a converted copy of the model (``model`` itself is not modified).
    """
    net = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    wrapper = SegmentationWrapper(net.eval(), config, with_logits=True, dtype=dtype).eval()

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            labels, confidence, logits = wrapper(torch.from_numpy(np.ascontiguousarray(batch)))
        return {
            OUTPUT_LABELS: labels.numpy(),
            OUTPUT_CONFIDENCE: confidence.numpy(),
            OUTPUT_LOGITS: logits.numpy(),
        }

    return run


def conv_bn_pairs(model: nn.Module, size: int = 64) -> dict[str, str]:
    """conv module name -> name of the BatchNorm fed directly by its output (hooks on one pass).

    These are the pairs an exporter folds. Found by running the model once on zeros, so no naming
    convention of the model is assumed.
    """
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: dict[str, str] = {}

    def after_conv(module: nn.Module, _: object, output: torch.Tensor) -> None:
        produced[id(output)] = names[module]

    def before_bn(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        conv = produced.get(id(inputs[0]))
        if conv is not None:
            pairs[conv] = names[module]

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(before_bn))
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm that follows a convolution folded into it (float32)."""
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv_name, bn_name in conv_bn_pairs(folded).items():
        conv, bn = modules[conv_name], modules[bn_name]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        weight, bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight, conv.bias = weight, bias
        parent, _, attribute = bn_name.rpartition(".")
        setattr(modules[parent] if parent else folded, attribute, nn.Identity())
    return folded


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _onednn_off() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TF32 acceleration on top of oneDNN ..."
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _within(run: Runner, context: Callable[[], contextlib.AbstractContextManager[Any]]) -> Runner:
    def wrapped(batch: np.ndarray) -> dict[str, np.ndarray]:
        with context():
            return run(batch)

    return wrapped


def float32_computations(model: nn.Module, config: Any) -> dict[str, Runner]:
    """Legitimate float32 computations of ``model`` (module doc), by name; the plain one first."""
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    plain = torch_reference(model, config)
    return {
        PLAIN: plain,
        "PyTorch float32, oneDNN off": _within(plain, _onednn_off),
        "PyTorch float32, BN folded": torch_reference(fold_batchnorm(model), config),
        f"PyTorch float32, {other} thread{'s' if other > 1 else ''}": _within(plain, lambda: _threads(other)),
    }


def torch_references(model: nn.Module, config: Any) -> tuple[Runner, dict[str, Runner]]:
    """(truth, noise-floor computations): the model in float64, and :func:`float32_computations`."""
    return torch_reference(model, config, torch.float64), float32_computations(model, config)
