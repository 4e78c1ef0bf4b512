"""Label sets: class names and palettes (pure Python, no torch).

Built-in sets live as JSON under ``models/label_sets/`` (names and colours as published by the
datasets / MMSegmentation):

=================  =====  =====================================================================
name               size   notes
=================  =====  =====================================================================
``cityscapes``     19     evaluation (train id) classes, official palette
``ade20k``         150    SceneParsing classes (label 0 "other" excluded)
``voc``            21     PASCAL VOC 2012 incl. background, standard VOC colour map
``pascal_context`` 59     background excluded, as the official DANet and MMSeg's 59-class set
``coco_stuff``     171    COCO-Stuff 164k used classes (80 things + 91 stuff); the 11 unused ids of
                          the 182-id annotation space are removed, as MMSegmentation does
=================  =====  =====================================================================

A checkpoint can carry its own set: :func:`load_label_set` also reads a JSON file
``{"classes": [...], "palette": [[r, g, b], ...]}`` (palette optional) or a text file with one
class name per line; missing palettes are generated with :func:`generate_palette`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LabelSet",
    "available_label_sets",
    "generate_palette",
    "get_label_set",
    "load_label_set",
]

_DATA_DIR = Path(__file__).resolve().parent / "label_sets"

_ALIASES: dict[str, str] = {
    "cityscapes": "cityscapes",
    "ade20k": "ade20k",
    "ade": "ade20k",
    "voc": "voc",
    "pascal_voc": "voc",
    "pascal_aug": "voc",
    "pascal_context": "pascal_context",
    "pcontext": "pascal_context",
    "context": "pascal_context",
    "coco_stuff": "coco_stuff",
    "cocostuff": "coco_stuff",
    "coco_stuff164k": "coco_stuff",
}

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class LabelSet:
    """A named list of classes with one RGB colour each (index = class id)."""

    name: str
    classes: list[str]
    palette: list[RGB]

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError(f"label set {self.name!r} has no classes")
        if len(self.palette) != len(self.classes):
            raise ValueError(
                f"label set {self.name!r}: {len(self.classes)} classes but {len(self.palette)} palette colours"
            )
        for rgb in self.palette:
            if len(rgb) != 3 or any(not 0 <= int(v) <= 255 for v in rgb):
                raise ValueError(f"label set {self.name!r}: bad palette colour {list(rgb)}")

    def __len__(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe ``{"name", "classes", "palette"}``."""
        return {"name": self.name, "classes": list(self.classes), "palette": [list(c) for c in self.palette]}


def generate_palette(num_classes: int) -> list[RGB]:
    """Distinct colours for ``num_classes`` ids: the PASCAL VOC bit-interleaved colour map.

    Id 0 is black; ids below 2**24 all get different colours.
    """
    palette: list[RGB] = []
    for index in range(num_classes):
        rgb = [0, 0, 0]
        value, bit = index, 7
        while value and bit >= 0:
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
            bit -= 1
        palette.append((rgb[0], rgb[1], rgb[2]))
    return palette


def available_label_sets() -> list[str]:
    """Canonical names of the built-in label sets."""
    return sorted(set(_ALIASES.values()))


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def get_label_set(name: str) -> LabelSet:
    """A built-in label set by name (case-insensitive; aliases such as ``ade``, ``pcontext``)."""
    canonical = _ALIASES.get(_normalise_name(name))
    if canonical is None:
        raise ValueError(f"unknown label set {name!r}; built-in sets: {', '.join(available_label_sets())}")
    data = json.loads((_DATA_DIR / f"{canonical}.json").read_text(encoding="utf-8"))
    return LabelSet(canonical, list(data["classes"]), [_rgb(c) for c in data["palette"]])


def _rgb(value: Any) -> RGB:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"palette entries must be [r, g, b], got {value!r}")
    r, g, b = (int(v) for v in value)
    return (r, g, b)


def _from_mapping(name: str, data: Any, source: Path) -> LabelSet:
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise ValueError(f"{source}: expected a JSON object with a 'classes' list")
    classes = [str(c) for c in data["classes"]]
    raw_palette = data.get("palette")
    palette = generate_palette(len(classes)) if raw_palette is None else [_rgb(c) for c in raw_palette]
    return LabelSet(str(data.get("name", name)), classes, palette)


def load_label_set(name_or_path: str | Path) -> LabelSet:
    """A built-in set by name, or a set read from a JSON or text file.

    JSON: ``{"classes": [...], "palette": [[r, g, b], ...]}`` (``palette`` and ``name`` optional), or a
    plain list of class names.
    Text: one class name per line (blank lines and lines starting with ``#`` ignored). The set's
    name defaults to the file's stem. Raises ``ValueError`` with the file name on bad content.
    """
    path = Path(name_or_path)
    if not path.is_file():
        if isinstance(name_or_path, str) and _normalise_name(name_or_path) in _ALIASES:
            return get_label_set(name_or_path)
        raise ValueError(
            f"{str(name_or_path)!r} is neither a label-set file nor a built-in set "
            f"({', '.join(available_label_sets())})"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        if isinstance(data, list):  # a plain list of class names
            data = {"classes": data}
        return _from_mapping(path.stem, data, path)
    classes = [line.strip() for line in text.splitlines()]
    classes = [c for c in classes if c and not c.startswith("#")]
    if not classes:
        raise ValueError(f"{path}: no class names found")
    return LabelSet(path.stem, classes, generate_palette(len(classes)))
