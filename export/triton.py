"""Triton / KServe model repository: ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/1/model.onnx``.

The configuration spells out the graph contract in Triton's terms: ``max_batch_size > 0`` so dims
omit the batch, ``-1`` for the dynamic height/width, uint8 ``image`` [-1, -1, 3], ``labels`` /
``confidence`` (/ ``logits``) outputs, dynamic batching (Triton only batches requests whose
shapes match) and an instance group on the GPU (on the CPU for the int8 variant).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from common.contract import INPUT_IMAGE, OUTPUT_CONFIDENCE, OUTPUT_LABELS, OUTPUT_LOGITS

__all__ = ["TritonModel", "render_config", "valid_model_name", "write_triton_model"]

_TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def valid_model_name(name: str) -> bool:
    """Triton model names become directory names and URL path segments."""
    return bool(_NAME.match(name)) and name not in {".", ".."}


@dataclass(frozen=True)
class TritonModel:
    """Where a model landed in the repository."""

    name: str
    directory: Path
    config: Path
    model: Path


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    """Dims without the batch dimension; symbolic or unknown dims become -1."""
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in list(dims)[1:]]


def _tensor_block(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in _TRITON_TYPES:
        raise ValueError(f"tensor {value.name!r} has a type Triton cannot describe ({elem})")
    dims = ", ".join(str(d) for d in _dims(value))
    return f'  {{\n    name: "{value.name}"\n    data_type: {_TRITON_TYPES[elem]}\n    dims: [ {dims} ]\n  }}'


def render_config(
    model: onnx.ModelProto,
    name: str,
    *,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 2000,
    kind: str = "KIND_GPU",
    instances: int = 1,
) -> str:
    """The ``config.pbtxt`` text for ``model`` (its inputs/outputs, in contract order)."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1 (dims then omit the batch dimension)")
    inputs = {value.name: value for value in model.graph.input}
    outputs = {value.name: value for value in model.graph.output}
    if INPUT_IMAGE not in inputs:
        raise ValueError(f"the graph has no {INPUT_IMAGE!r} input")
    ordered = [outputs[n] for n in (OUTPUT_LABELS, OUTPUT_CONFIDENCE, OUTPUT_LOGITS) if n in outputs]
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        _tensor_block(inputs[INPUT_IMAGE]),
        "]",
        "output [",
        ",\n".join(_tensor_block(value) for value in ordered),
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: {kind}",
        "  }",
        "]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    return "\n".join(lines) + "\n"


def write_triton_model(
    repository: Path,
    name: str,
    onnx_path: Path,
    *,
    kind: str = "KIND_GPU",
    max_batch_size: int = 8,
    version: int = 1,
) -> TritonModel:
    """Copy ``onnx_path`` to ``repository/name/<version>/model.onnx`` and write ``config.pbtxt``."""
    if not valid_model_name(name):
        raise ValueError(f"{name!r} is not a valid Triton model name (letters, digits, '.', '_', '-')")
    model = onnx.load(str(onnx_path), load_external_data=False)
    directory = repository / name
    version_dir = directory / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / "model.onnx"
    shutil.copyfile(onnx_path, target)
    config = directory / "config.pbtxt"
    config.write_text(render_config(model, name, kind=kind, max_batch_size=max_batch_size), encoding="utf-8")
    return TritonModel(name=name, directory=directory, config=config, model=target)
