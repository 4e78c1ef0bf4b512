"""Bounded-memory position attention for the exported graph.

The model's eager path processes the queries in chunks with a Python loop; traced, such a loop
freezes the number of chunks (and with it the input size). The model's export path
(:func:`models.attention.attend_split`) splits the queries into a *fixed* number of chunks, which
keeps H and W dynamic but lets the chunk grow with the image: its memory is ``N**2 / chunks``.

Here the attention core becomes one custom op, ``danet_export::pam_attention``, that the ONNX
translation table lowers to an ONNX ``Scan``:

* the chunk size is computed in the graph from the actual batch and number of positions: at most
  ``clamp(budget // (B * N), 1, N)`` queries, so every chunk's energy matrix holds at most ``budget``
  elements whatever the input size (16 MiB in float32 by default), and the N queries split evenly
  into as few chunks as that allows (``steps = ceil(N / most)``, ``chunk = ceil(N / steps)``: fewer
  than ``steps`` padded rows in all);
* the queries are zero-padded to a whole number of chunks and scanned; each iteration computes
  ``softmax(q_chunk @ k) @ v^T`` in float32 and the padded rows are dropped at the end.

Every softmax row still sees all N keys, so the result is exact (identical maths to the naive
formulation, only the evaluation order of the queries changes). The graph size does not depend
on the number of chunks, and small inputs run as a single chunk.

``attention="fused"`` lowers the same op to ONE ``com.microsoft.MultiHeadAttention`` node (one head,
``scale=1.0``, so it is exactly ``softmax(q k) v``): GPU providers run it with their fused,
memory-efficient kernels, where a Scan runs iteration by iteration and keeps the attention out of
fused kernels. Which one is the default on which provider is measured (export/README.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import onnx
import onnx_ir as ir
import torch
from onnxscript import opset18
from onnxscript.values import Op, Opset
from torch import Tensor, nn

__all__ = [
    "ATTENTION_MODES",
    "DEFAULT_ATTENTION",
    "DEFAULT_ATTENTION_BUDGET",
    "bounded_attention",
    "make_translation_table",
    "pam_attention",
]

# onnxscript's typed op signatures do not model shape arithmetic on int64 tensors well.
op: Any = opset18


def _mha_schema() -> onnx.defs.OpSchema:
    """The part of onnxruntime's ``com.microsoft.MultiHeadAttention`` schema the export uses."""
    param = onnx.defs.OpSchema.FormalParameter
    attr = onnx.defs.OpSchema.Attribute
    return onnx.defs.OpSchema(
        "MultiHeadAttention",
        "com.microsoft",
        1,
        inputs=[param("query", "T"), param("key", "T"), param("value", "T")],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[
            attr("num_heads", onnx.defs.OpSchema.AttrType.INT, "number of heads"),
            attr("scale", onnx.defs.OpSchema.AttrType.FLOAT, "scale of Q K^T"),
        ],
    )


# onnxruntime's contrib operator (not in the ONNX schema registry, hence the explicit schema).
multi_head_attention: Any = Op(Opset("com.microsoft", 1), "MultiHeadAttention", _mha_schema())

#: ``scan``: exact, bounded-memory Scan over query chunks; ``fused``: one MultiHeadAttention node.
ATTENTION_MODES = ("scan", "fused")
#: Measured on the CPU provider (export/README.md): the Scan bounds memory at full resolution.
DEFAULT_ATTENTION = "scan"

#: Elements of one chunk's energy matrix (float32: 16 MiB); the softmax doubles it. Under glibc's 32 MiB
#: mmap threshold and a thread heap's 64 MiB, so a server that keeps freed blocks for reuse
#: (server/allocator.py) maps nothing afresh for them (DANet-R50 at 512x512: no page faults per pass
#: without the CPU arena, against two 64 MiB blocks mapped and zeroed per pass with 64 MiB chunks).
DEFAULT_ATTENTION_BUDGET = 1 << 22


@torch.library.custom_op("danet_export::pam_attention", mutates_args=())
def pam_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``softmax(query @ key) @ value^T`` -> [B, C, N] for query [B, N, d], key [B, d, N], value [B, C, N].

    Eager reference (used only if the wrapper is run in PyTorch while patched); the exported graph
    uses the Scan from :func:`make_translation_table`.
    """
    attention = torch.softmax(torch.bmm(query, key), dim=-1)
    return torch.bmm(value, attention.transpose(1, 2))


@pam_attention.register_fake
def _pam_attention_fake(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    return value.new_empty(value.shape)


def _scan_attention(query: Any, key: Any, value: Any, budget: int) -> Any:
    """ONNX lowering of :func:`pam_attention` (onnxscript ops, traced by the torch exporter)."""
    value_t = op.Transpose(value, perm=[0, 2, 1])  # [B, N, C]: each chunk is then one MatMul
    shape = op.Shape(query)
    batch = op.Slice(shape, [0], [1])
    positions = op.Slice(shape, [1], [2])
    dim = op.Slice(shape, [2], [3])
    one = op.Constant(value_ints=[1])
    per_chunk = op.Div(op.Constant(value_ints=[budget]), op.Mul(batch, positions))
    most = op.Max(op.Min(per_chunk, positions), one)  # the budget's largest chunk
    steps = op.Div(op.Sub(op.Add(positions, most), one), most)
    chunk = op.Div(op.Sub(op.Add(positions, steps), one), steps)  # even split: <= most, < steps padded rows
    padded_positions = op.Mul(steps, chunk)
    zero = op.Constant(value_ints=[0])
    pads = op.Concat(zero, zero, zero, zero, op.Sub(padded_positions, positions), zero, axis=0)
    queries = op.Reshape(op.Pad(query, pads), op.Concat(batch, steps, chunk, dim, axis=0))

    # Scan body: one chunk of queries [B, chunk, d] -> attended values [B, chunk, C].
    # `key` and `value_t` are read from the outer scope.
    chunk_in = ir.Value(
        name="pam_query_chunk", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([None, None, None])
    )
    energy = ir.Node("", "MatMul", [chunk_in, key], num_outputs=1, name="pam_energy")
    softmax = ir.Node(
        "", "Softmax", [energy.outputs[0]], attributes=[ir.AttrInt64("axis", -1)], name="pam_softmax"
    )
    attended = ir.Node("", "MatMul", [softmax.outputs[0], value_t], num_outputs=1, name="pam_attend")
    energy.outputs[0].name = "pam_energy_chunk"
    softmax.outputs[0].name = "pam_attention_chunk"
    attended.outputs[0].name = "pam_attended_chunk"
    body = ir.Graph([chunk_in], [attended.outputs[0]], nodes=[energy, softmax, attended], name="pam_scan")

    # Scanned over axis 1 of [B, steps, chunk, d]; outputs stacked on axis 0: [steps, B, chunk, C].
    stacked = op.Scan(queries, body=body, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[0])
    channels = op.Slice(op.Shape(value), [1], [2])
    merged = op.Reshape(
        op.Transpose(stacked, perm=[1, 3, 0, 2]), op.Concat(batch, channels, padded_positions, axis=0)
    )
    return op.Slice(merged, zero, positions, op.Constant(value_ints=[2]))


def _fused_attention(query: Any, key: Any, value: Any) -> Any:
    """ONNX lowering of :func:`pam_attention` as one ``com.microsoft.MultiHeadAttention`` (1 head)."""
    key_t = op.Transpose(key, perm=[0, 2, 1])  # [B, N, d]
    value_t = op.Transpose(value, perm=[0, 2, 1])  # [B, N, C]
    attended = multi_head_attention(query, key_t, value_t, num_heads=1, scale=1.0)  # [B, N, C]
    return op.Transpose(attended, perm=[0, 2, 1])


def make_translation_table(
    budget: int = DEFAULT_ATTENTION_BUDGET, attention: str = DEFAULT_ATTENTION
) -> dict[Any, Any]:
    """``custom_translation_table`` for :func:`torch.onnx.export` lowering :func:`pam_attention`."""
    if budget < 1:
        raise ValueError(f"attention budget must be positive, got {budget}")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")

    def lower(query: Any, key: Any, value: Any) -> Any:
        if attention == "fused":
            return _fused_attention(query, key, value)
        return _scan_attention(query, key, value, budget)

    return {torch.ops.danet_export.pam_attention.default: lower}


def _position_attention_modules(model: nn.Module) -> list[nn.Module]:
    from models.attention import PositionAttention

    return [module for module in model.modules() if isinstance(module, PositionAttention)]


@contextlib.contextmanager
def bounded_attention(model: nn.Module) -> Iterator[int]:
    """Route every PositionAttention of ``model`` through :func:`pam_attention` while exporting.

    Uses the model's exporter hook (``PositionAttention._attend_split``, selected by
    ``force_split``) and its ``_project`` step, so the projections, ``gamma`` and the residual stay
    the model's own code. The attention itself runs in float32 even in a half-precision graph
    (energies over thousands of positions overflow float16). Yields the number of patched modules.
    """
    modules = _position_attention_modules(model)
    saved = [(module, module.force_split) for module in modules]
    for module in modules:

        def attend(x: Tensor, module: Any = module) -> Tensor:
            query, key, value = module._project(x)
            attended = pam_attention(query.float(), key.float(), value.float())
            return attended.to(x.dtype).reshape(x.shape)

        setattr(module, "_attend_split", attend)  # noqa: B010 - instance override of the hook
        setattr(module, "force_split", True)  # noqa: B010
    try:
        yield len(modules)
    finally:
        for module, force_split in saved:
            delattr(module, "_attend_split")
            setattr(module, "force_split", force_split)  # noqa: B010
