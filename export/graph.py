"""PyTorch -> ONNX: trace the wrapper with dynamic batch/height/width and tidy the graph.

The torch.onnx dynamo exporter is used with symbolic batch/height/width, so every size in the
graph (interpolation targets, reshapes, the attention's chunking) is computed from the input
shape at run time; nothing is frozen at the example's size (pytorch #84374). BatchNorm is folded
into the convolutions by the exporter's optimiser.

The graph always gets a ``logits`` output while tracing; :func:`finalize_graph` drops it from the
outputs when the user did not ask for it. The tensor keeps its name, so verification can expose
it again on the very same graph (:func:`export.verify.with_logits_output`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import nn

from common.contract import INPUT_IMAGE, OUTPUT_CONFIDENCE, OUTPUT_LABELS, OUTPUT_LOGITS
from export.attention import (
    DEFAULT_ATTENTION,
    DEFAULT_ATTENTION_BUDGET,
    bounded_attention,
    make_translation_table,
)
from export.wrapper import SegmentationWrapper, fp32_channel_attention
from models.config import DANetConfig

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "export_graph", "finalize_graph"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20
MIN_OPSET = 18  # the dynamo exporter's floor
MAX_OPSET = 23

#: Example input used for tracing: batch 2 and sizes that are not 0/1 (which torch.export would
#: specialise), neither multiples of each other.
_EXAMPLE_SHAPE = (2, 64, 80, 3)

_GRAPH_DOC = (
    "DANet semantic segmentation. Input 'image': uint8 [batch, height, width, 3] RGB (normalisation "
    "inside the graph). Outputs at the input resolution: 'labels' class ids [batch, height, width], "
    "'confidence' float32 max softmax probability [batch, height, width], optionally 'logits' float32 "
    "[batch, classes, height, width]. Class names and palette: metadata_props."
)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs progress and optional-dependency warnings; keep only errors."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(name) for name in names]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for item, level in zip(loggers, levels, strict=True):
            item.setLevel(level)


def export_graph(
    model: nn.Module,
    config: DANetConfig,
    *,
    half: bool = False,
    opset: int = DEFAULT_OPSET,
    attention_budget: int = DEFAULT_ATTENTION_BUDGET,
    attention: str = DEFAULT_ATTENTION,
) -> onnx.ModelProto:
    """Trace ``model`` (a DANet in eval mode) wrapped by :class:`SegmentationWrapper`.

    Returns a graph with outputs ``labels``, ``confidence`` and ``logits``. With ``half`` the
    network runs in float16 (a copy is made; ``model`` is not modified). ``attention`` picks the
    position attention's lowering (:data:`export.attention.ATTENTION_MODES`).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    # The fp16 graph needs a converted copy; the fp32 one traces the model itself (patched and
    # restored by the context managers below), which spares a copy of the weights.
    net = copy.deepcopy(model).half().eval() if half else model.eval()
    wrapper = SegmentationWrapper(net, config, with_logits=True, half=half).eval()
    example = torch.zeros(_EXAMPLE_SHAPE, dtype=torch.uint8)
    dims = {
        0: torch.export.Dim("batch", min=1, max=4096),
        1: torch.export.Dim("height", min=8, max=65536),
        2: torch.export.Dim("width", min=8, max=65536),
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_exporter())
        stack.enter_context(torch.no_grad())
        patched = stack.enter_context(bounded_attention(net))
        if half:
            stack.enter_context(fp32_channel_attention(net))
        logger.debug("exporting with %d bounded position-attention module(s)", patched)
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_IMAGE],
            output_names=[OUTPUT_LABELS, OUTPUT_CONFIDENCE, OUTPUT_LOGITS],
            dynamic_shapes={INPUT_IMAGE: dims},
            custom_translation_table=make_translation_table(attention_budget, attention),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _strip_exporter_annotations(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _strip_exporter_annotations(attribute.g)
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        del value.metadata_props[:]
    for tensor in graph.initializer:
        del tensor.metadata_props[:]


def finalize_graph(model: onnx.ModelProto, *, logits: bool, props: dict[str, str]) -> onnx.ModelProto:
    """Drop the ``logits`` output unless wanted, strip exporter annotations, set the metadata."""
    from export.metadata import write_metadata

    if not logits:
        kept = [value for value in model.graph.output if value.name != OUTPUT_LOGITS]
        del model.graph.output[:]
        model.graph.output.extend(kept)
    _strip_exporter_annotations(model.graph)
    model.producer_name = "danet-export"
    model.doc_string = _GRAPH_DOC
    write_metadata(model, props)
    return model
