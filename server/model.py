"""Model files -> sessions + ``ModelInfo``: the contract check and everything read from ONNX metadata.

Preprocessing knowledge (classes, palette, preferred size, mean) comes ONLY from the model's
``metadata_props``; the server hard-codes none of it.
"""

from __future__ import annotations

import colorsys
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import (
    DEFAULT_ONNX,
    INPUT_IMAGE,
    META_ARCHITECTURE,
    META_CLASSES,
    META_EVAL_BASE_SIZE,
    META_EVAL_CROP_SIZE,
    META_EVAL_STRIDE,
    META_MEAN,
    META_MODEL_NAME,
    META_PALETTE,
    META_PREFERRED_SIZE,
    OUTPUT_CONFIDENCE,
    OUTPUT_LABELS,
    OUTPUT_LOGITS,
)
from server.errors import ModelLoadError

logger = logging.getLogger(__name__)

# onnxruntime type strings -> (KServe v2 datatype, numpy dtype)
ORT_TYPES: dict[str, tuple[str, str]] = {
    "tensor(bool)": ("BOOL", "bool"),
    "tensor(uint8)": ("UINT8", "uint8"),
    "tensor(uint16)": ("UINT16", "uint16"),
    "tensor(uint32)": ("UINT32", "uint32"),
    "tensor(uint64)": ("UINT64", "uint64"),
    "tensor(int8)": ("INT8", "int8"),
    "tensor(int16)": ("INT16", "int16"),
    "tensor(int32)": ("INT32", "int32"),
    "tensor(int64)": ("INT64", "int64"),
    "tensor(float16)": ("FP16", "float16"),
    "tensor(float)": ("FP32", "float32"),
    "tensor(double)": ("FP64", "float64"),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 name: UINT8, FP32, ...
    shape: list[int]  # -1 = dynamic

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(next(np_name for v2, np_name in ORT_TYPES.values() if v2 == self.datatype))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ModelInfo:
    """What clients and adapters may know about a served model."""

    name: str
    path: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    provider: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, Any] = field(default_factory=dict)
    preferred_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    version: str = "1"
    fallback: bool = False  # a GPU provider was requested but the model runs on CPU
    eval_defaults: dict[str, tuple[int, int]] = field(default_factory=dict)  # base_size, crop_size, stride
    align_corners: bool = False  # of the graph's final upsampling (MMSegmentation's resize back follows it)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_logits(self) -> bool:
        return any(o.name == OUTPUT_LOGITS for o in self.outputs)

    @property
    def has_confidence(self) -> bool:
        return any(o.name == OUTPUT_CONFIDENCE for o in self.outputs)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "provider": self.provider,
            "input": self.inputs[0].to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "preferred_size": list(self.preferred_size) if self.preferred_size else None,
            "supports_slide": self.has_logits,
            "metadata": self.metadata,
        }


def resolve_model_paths(paths: list[Path]) -> list[Path]:
    """Files as given; directories expanded to their ``*.onnx`` (sorted); none = the embedded default."""
    if not paths:
        if not DEFAULT_ONNX.is_file():
            raise ModelLoadError(
                f"no --model given and the embedded default model {DEFAULT_ONNX} is missing "
                "(run `make export-default`, or pass --model PATH)"
            )
        return [DEFAULT_ONNX]
    files: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix == ".onnx" and p.is_file())
            if not found:
                raise ModelLoadError(f"model directory {path} contains no .onnx files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ModelLoadError(f"model path {path} does not exist")
    return files


def parse_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """metadata_props values are JSON strings; keep a value as text when it is not JSON."""
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            parsed[key] = json.loads(value)
        except (TypeError, ValueError):
            parsed[key] = value
    return parsed


def default_palette(count: int) -> list[tuple[int, int, int]]:
    """Evenly spaced distinct hues, used only when a model carries no palette."""
    colours = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in ORT_TYPES:
        raise ModelLoadError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, datatype=ORT_TYPES[arg.type][0], shape=shape)


def describe_session(session: Any, path: Path, provider: str, *, fallback: bool = False) -> ModelInfo:
    """Check the tensor contract and read the metadata of a created session."""
    label = str(path)
    inputs = [_spec(a) for a in session.get_inputs()]
    outputs = [_spec(a) for a in session.get_outputs()]
    if len(inputs) != 1 or inputs[0].name != INPUT_IMAGE:
        raise ModelLoadError(
            f"{label}: expected exactly one input named {INPUT_IMAGE!r}, found {[t.name for t in inputs]}"
        )
    image = inputs[0]
    if image.datatype != "UINT8" or len(image.shape) != 4 or image.shape[3] not in (-1, 3):
        raise ModelLoadError(
            f"{label}: input {INPUT_IMAGE!r} must be UINT8 [N, H, W, 3], found {image.datatype} {image.shape}"
        )
    if OUTPUT_LABELS not in [o.name for o in outputs]:
        raise ModelLoadError(f"{label}: no {OUTPUT_LABELS!r} output (found {[o.name for o in outputs]})")

    metadata = parse_metadata(dict(session.get_modelmeta().custom_metadata_map))
    classes = metadata.get(META_CLASSES)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelLoadError(
            f"{label}: metadata_props[{META_CLASSES!r}] must be a JSON list of class names "
            "(export the model with danet-export)"
        )
    palette_raw = metadata.get(META_PALETTE)
    if palette_raw is None:
        logger.warning("%s has no palette metadata; using generated colours", label)
        palette = default_palette(len(classes))
    else:
        try:
            palette = [(int(c[0]), int(c[1]), int(c[2])) for c in palette_raw]
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise ModelLoadError(
                f"{label}: metadata_props[{META_PALETTE!r}] is not a list of [r, g, b]"
            ) from exc
        if len(palette) < len(classes):
            palette += default_palette(len(classes))[len(palette) :]
    preferred = metadata.get(META_PREFERRED_SIZE)
    preferred_size = None
    if (
        isinstance(preferred, list)
        and len(preferred) == 2
        and all(isinstance(v, int) and v > 0 for v in preferred)
    ):
        preferred_size = (int(preferred[0]), int(preferred[1]))
    mean_raw = metadata.get(META_MEAN)
    mean = None
    if isinstance(mean_raw, list) and len(mean_raw) == 3:
        mean = (float(mean_raw[0]), float(mean_raw[1]), float(mean_raw[2]))
    eval_defaults = {
        option: size
        for option, key in (
            ("base_size", META_EVAL_BASE_SIZE),
            ("crop_size", META_EVAL_CROP_SIZE),
            ("stride", META_EVAL_STRIDE),
        )
        if (size := _eval_size(metadata.get(key))) is not None
    }
    architecture = metadata.get(META_ARCHITECTURE)
    align_corners = (
        bool(architecture.get("align_corners", False)) if isinstance(architecture, dict) else False
    )
    name = metadata.get(META_MODEL_NAME)
    if not isinstance(name, str) or not name.strip():
        name = path.stem
    return ModelInfo(
        name=name.strip(),
        path=str(path),
        classes=list(classes),
        palette=palette,
        provider=provider,
        inputs=inputs,
        outputs=outputs,
        metadata=metadata,
        preferred_size=preferred_size,
        mean=mean,
        fallback=fallback,
        eval_defaults=eval_defaults,
        align_corners=align_corners,
    )


def _eval_size(value: Any) -> tuple[int, int] | None:
    """An eval_* metadata value (N or [a, b], positive integers) as a pair; anything else is ignored."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    return None
