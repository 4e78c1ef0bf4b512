"""The DANet architecture description (pure Python, no torch).

A :class:`DANetConfig` names everything needed to rebuild a network and to use
it: the backbone shape, the head widths, the number of classes with their names
and palette, and the input normalisation. It travels with the weights (native
checkpoints, ONNX ``metadata_props``), so consumers never hard-code any of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Blocks per stage for each supported ResNet depth, and whether the block is a bottleneck.
RESNET_LAYOUTS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}

#: ImageNet statistics on the 0-255 scale (used by both the official code and MMSegmentation).
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class DANetConfig:
    """Everything that defines a DANet and how to feed it.

    Backbone
        ``depth`` 18/34 use basic blocks, 50/101/152 bottlenecks. ``deep_stem`` replaces the 7x7 stem
        convolution by three 3x3 conv-BN-ReLU layers giving ``stem_width``, ``stem_width`` and
        ``2 * stem_width`` channels (official code: ``stem_width=64`` -> 64/64/128; MMSegmentation
        ResNetV1c: ``stem_width=32`` -> 32/32/64). Without the deep stem, the 7x7 convolution gives
        ``stem_width`` channels (64 in both sources). ``base_width`` is the width of layer1 (64 for the
        standard nets; a slim variant uses e.g. 16); stage *i* has ``base_width * 2**i`` planes.
        ``output_stride`` 8 dilates layer3 (2) and layer4 (4), 16 dilates layer4 (2); the first block of
        a dilated stage uses half the dilation, as both sources do. ``multi_grid``, when given, lists the
        explicit dilations of the layer4 blocks (block *i* uses ``multi_grid[i % len]``, the official
        ``--multi-grid --multi-dilation 4 8 16``).
    Head
        ``head_channels`` (default: backbone output // 4, the official choice) and ``pam_channels``
        (default: head_channels // 8) are the DANet head widths. ``pam_query_chunk`` bounds the
        position-attention memory: queries are processed that many at a time (exact).
    Use
        ``num_classes``, ``classes``, ``palette`` (one RGB triple per class), ``mean``/``std`` on the
        0-255 scale (the model itself takes normalised input), ``align_corners`` of the final
        bilinear upsampling (official True, MMSegmentation False), ``preferred_size`` ``(h, w)`` the
        model was trained or evaluated at, and a ``name``.
    """

    depth: int = 50
    deep_stem: bool = True
    stem_width: int = 64
    base_width: int = 64
    output_stride: int = 8
    multi_grid: tuple[int, ...] | None = None
    num_classes: int = 19
    align_corners: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pam_query_chunk: int = 1024
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    name: str = "danet"
    head_channels: int | None = None
    pam_channels: int | None = None
    preferred_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # Normalise sequences coming from JSON/lists into hashable tuples.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in rgb) for rgb in self.palette))
        if self.multi_grid is not None:
            object.__setattr__(self, "multi_grid", tuple(int(v) for v in self.multi_grid))
        if self.preferred_size is not None:
            object.__setattr__(self, "preferred_size", tuple(int(v) for v in self.preferred_size))
        self._validate()

    def _validate(self) -> None:
        problems: list[str] = []
        if self.depth not in RESNET_LAYOUTS:
            problems.append(f"depth must be one of {sorted(RESNET_LAYOUTS)}, got {self.depth}")
        if self.output_stride not in (8, 16):
            problems.append(f"output_stride must be 8 or 16, got {self.output_stride}")
        if self.multi_grid is not None and (not self.multi_grid or min(self.multi_grid) < 1):
            problems.append(
                f"multi_grid must be a non-empty list of positive dilations, got {self.multi_grid}"
            )
        for key in ("stem_width", "base_width", "num_classes", "pam_query_chunk"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("head_channels", "pam_channels"):
            value = getattr(self, key)
            if value is not None and value < 1:
                problems.append(f"{key} must be positive, got {value}")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean and std must have 3 values each")
        elif min(self.std) <= 0:
            problems.append(f"std values must be positive, got {self.std}")
        if self.classes and len(self.classes) != self.num_classes:
            problems.append(f"{len(self.classes)} class names for num_classes={self.num_classes}")
        if self.palette:
            if len(self.palette) != self.num_classes:
                problems.append(f"{len(self.palette)} palette colours for num_classes={self.num_classes}")
            if any(len(rgb) != 3 or min(rgb) < 0 or max(rgb) > 255 for rgb in self.palette):
                problems.append("palette entries must be [r, g, b] with values in 0..255")
        if self.preferred_size is not None and (
            len(self.preferred_size) != 2 or min(self.preferred_size) < 1
        ):
            problems.append(f"preferred_size must be [height, width], got {self.preferred_size}")
        if problems:
            raise ValueError("invalid DANetConfig: " + "; ".join(problems))

    # --- derived values ------------------------------------------------------
    @property
    def bottleneck(self) -> bool:
        """Whether the backbone uses bottleneck blocks (depth >= 50)."""
        return RESNET_LAYOUTS[self.depth][0]

    @property
    def blocks(self) -> tuple[int, int, int, int]:
        """Number of residual blocks in layer1..layer4."""
        return RESNET_LAYOUTS[self.depth][1]

    @property
    def backbone_channels(self) -> int:
        """Channels of the layer4 output that feeds the head."""
        return self.base_width * 8 * (4 if self.bottleneck else 1)

    @property
    def stem_channels(self) -> int:
        """Channels leaving the stem (input of layer1)."""
        return 2 * self.stem_width if self.deep_stem else self.stem_width

    @property
    def inter_channels(self) -> int:
        """Width of the DANet head branches."""
        return self.head_channels if self.head_channels is not None else self.backbone_channels // 4

    @property
    def attention_channels(self) -> int:
        """Width of the position-attention query/key projections."""
        return self.pam_channels if self.pam_channels is not None else max(1, self.inter_channels // 8)

    # --- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists); ``from_dict(to_dict())`` round-trips."""
        data = asdict(self)
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DANetConfig:
        """Build from :meth:`to_dict` output; unknown keys are refused with their names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DANetConfig keys: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DANetConfig:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("DANetConfig JSON must be an object")
        return cls.from_dict(data)
