"""Re-use one traced graph for many checkpoints of the same architecture (the test matrix's speed).

Tracing a ResNet-50/101 DANet with the dynamo exporter takes 30-90 s on the CI box, while the graph
of a given architecture does not depend on the weights. :func:`rebind` writes the weights of another
model of the same architecture into an exported graph exactly as ``torch.onnx.export(optimize=True)``
would have: every BatchNorm that follows a convolution is folded into it with onnxscript's formula
(``W * gamma / sqrt(var + eps)``, ``(b - mean) * gamma / sqrt(var + eps) + beta``, float32 numpy),
every other parameter is copied by name. ``tests/export/test_floor_matrix.py`` checks that rebinding
a graph to the very model it was traced from reproduces its initializers bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from export.floor import conv_bn_pairs

PREFIX = "model."  # the wrapper's attribute holding the DANet


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    def array(t: torch.Tensor | None) -> np.ndarray:
        assert t is not None
        return t.detach().numpy().astype(np.float32)

    gamma, beta = array(bn.weight), array(bn.bias)
    mean, var = array(bn.running_mean), array(bn.running_var)
    scale = gamma / np.sqrt(var + np.float32(bn.eps))
    bias = array(conv.bias) if conv.bias is not None else np.zeros_like(mean)
    return array(conv.weight) * scale.reshape(-1, 1, 1, 1), (bias - mean) * scale + beta


def rebind(graph: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    """A copy of ``graph`` (exported from a model of ``model``'s architecture) with ``model``'s weights."""
    modules = dict(model.named_modules())
    values: dict[str, np.ndarray] = {
        PREFIX + key: tensor.detach().numpy() for key, tensor in model.state_dict().items()
    }
    for conv_name, bn_name in conv_bn_pairs(model).items():
        conv, bn = modules[conv_name], modules[bn_name]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        weight_name = f"{PREFIX}{conv_name}.weight"
        bias_name = f"{PREFIX}{conv_name}.bias" if conv.bias is not None else weight_name + "_bias"
        values[weight_name], values[bias_name] = _fold(conv, bn)
    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    replaced = 0
    for tensor in copy.graph.initializer:
        if tensor.name in values:
            old = numpy_helper.to_array(tensor)
            new = values[tensor.name].astype(old.dtype).reshape(old.shape)
            tensor.CopyFrom(numpy_helper.from_array(new, tensor.name))
            replaced += 1
    convs = sum(isinstance(module, nn.Conv2d) for module in model.modules())
    assert replaced >= convs, f"only {replaced} initializers rebound for {convs} convolutions"
    return copy
