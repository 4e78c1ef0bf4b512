"""What the client returns: plain dataclasses, the same for REST and gRPC."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Format = Literal["index", "color", "overlay", "json"]
FORMATS: tuple[str, ...] = ("index", "color", "overlay", "json")


@dataclass(frozen=True)
class ClassStat:
    """Pixels of one class in a label map."""

    id: int
    name: str
    pixels: int
    fraction: float


@dataclass(frozen=True)
class ModelSummary:
    """A model the server runs."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    provider: str | None = None


@dataclass(frozen=True)
class Segmentation:
    """One segmented image.

    ``png`` holds the picture for the ``index`` (grey label PNG, value = class id), ``color`` and
    ``overlay`` formats; ``stats`` the per-class pixel counts (``json``, and whenever the server sent them);
    ``document`` the JSON reply for the ``json`` format.
    """

    format: str
    model: str
    height: int
    width: int
    provider: str | None = None
    png: bytes | None = None
    stats: tuple[ClassStat, ...] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    document: dict[str, Any] | None = None

    def labels(self) -> np.ndarray:
        """The ``[H, W]`` class-id map (``index`` format only)."""
        if self.format != "index" or self.png is None:
            from client._errors import DanetClientError

            raise DanetClientError(f"labels are only available for format 'index', not {self.format!r}")
        from PIL import Image

        with Image.open(io.BytesIO(self.png)) as image:
            return np.asarray(image)

    @property
    def suffix(self) -> str:
        """File suffix for ``save``."""
        return ".json" if self.format == "json" else ".png"

    def save(self, path: str | Path) -> Path:
        """Write the PNG (image formats) or the JSON document (``json``) to ``path``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "json":
            target.write_text(json.dumps(self.document, indent=2) + "\n", encoding="utf-8")
        else:
            target.write_bytes(self.png or b"")
        return target
