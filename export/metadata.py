"""The self-description written into ONNX ``metadata_props``.

Every value is a JSON text (strings included, so ``json.loads`` works on all of them); the keys
come from :mod:`common.contract`. The server needs nothing else to serve the file: class names,
palette, normalisation (informational: it is already inside the graph), preferred input size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any

import onnx

from common.contract import (
    META_ARCHITECTURE,
    META_CLASSES,
    META_EVAL_BASE_SIZE,
    META_EVAL_CROP_SIZE,
    META_EXPORTER_VERSION,
    META_MEAN,
    META_MODEL_NAME,
    META_PALETTE,
    META_PRECISION,
    META_PREFERRED_SIZE,
    META_SOURCE_FORMAT,
    META_SOURCE_SHA256,
    META_STD,
)
from models.config import DANetConfig
from models.labels import generate_palette

__all__ = [
    "DEFAULT_PREFERRED_SIZE",
    "ModelDescription",
    "exporter_version",
    "read_metadata",
    "write_metadata",
]

#: Used when neither the checkpoint nor the command line gives a preferred size.
DEFAULT_PREFERRED_SIZE: tuple[int, int] = (512, 512)


def exporter_version(opset: int) -> str:
    """``danet-serve X.Y.Z (torch A.B, onnx opset N)``."""
    try:
        package = importlib_metadata.version("danet-serve")
    except importlib_metadata.PackageNotFoundError:
        package = "unknown"
    import torch

    return f"danet-serve {package} (torch {torch.__version__}, onnx opset {opset})"


@dataclass(frozen=True)
class ModelDescription:
    """What a graph says about itself: config + provenance + precision."""

    config: DANetConfig
    model_name: str
    source_format: str
    source_sha256: str
    precision: str  # "fp32" | "fp16" | "int8"
    exporter_version: str
    preferred_size: tuple[int, int] | None = None
    eval_base_size: int | None = None  # defaults of the server's tta=official|mmseg
    eval_crop_size: int | None = None

    @property
    def classes(self) -> list[str]:
        """Class names; ``class_<i>`` when the checkpoint carried none."""
        if self.config.classes:
            return list(self.config.classes)
        return [f"class_{index}" for index in range(self.config.num_classes)]

    @property
    def palette(self) -> list[list[int]]:
        """One [r, g, b] per class; the VOC colour map when the checkpoint carried none."""
        colours = self.config.palette or tuple(generate_palette(self.config.num_classes))
        return [list(rgb) for rgb in colours]

    @property
    def size(self) -> tuple[int, int]:
        """The preferred inference size (explicit > config > :data:`DEFAULT_PREFERRED_SIZE`)."""
        return self.preferred_size or self.config.preferred_size or DEFAULT_PREFERRED_SIZE

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` as key -> JSON text."""
        values: dict[str, Any] = {
            META_CLASSES: self.classes,
            META_PALETTE: self.palette,
            META_ARCHITECTURE: self.config.to_dict(),
            META_MEAN: list(self.config.mean),
            META_STD: list(self.config.std),
            META_PREFERRED_SIZE: list(self.size),
            META_SOURCE_FORMAT: self.source_format,
            META_SOURCE_SHA256: self.source_sha256,
            META_EXPORTER_VERSION: self.exporter_version,
            META_PRECISION: self.precision,
            META_MODEL_NAME: self.model_name,
        }
        if self.eval_base_size is not None:
            values[META_EVAL_BASE_SIZE] = self.eval_base_size
        if self.eval_crop_size is not None:
            values[META_EVAL_CROP_SIZE] = self.eval_crop_size
        return {key: json.dumps(value, separators=(",", ":")) for key, value in values.items()}


def write_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace ``model.metadata_props`` with ``props`` (other writers' keys are dropped)."""
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """``metadata_props`` decoded from JSON (a value that is not JSON is returned as text)."""
    decoded: dict[str, Any] = {}
    for entry in model.metadata_props:
        try:
            decoded[entry.key] = json.loads(entry.value)
        except ValueError:
            decoded[entry.key] = entry.value
    return decoded
