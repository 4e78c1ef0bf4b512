"""Label sets: sizes, palettes, aliases and user files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.labels import available_label_sets, generate_palette, get_label_set, load_label_set


@pytest.mark.parametrize(
    ("name", "size"),
    [("cityscapes", 19), ("ade20k", 150), ("voc", 21), ("pascal_context", 59), ("coco_stuff", 171)],
)
def test_builtin_sizes(name: str, size: int) -> None:
    labels = get_label_set(name)
    assert labels.name == name
    assert len(labels.classes) == size
    assert len(labels.palette) == size
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in labels.palette)
    assert len(set(labels.classes)) == size, "class names must be unique"


def test_available_lists_every_builtin() -> None:
    assert available_label_sets() == ["ade20k", "cityscapes", "coco_stuff", "pascal_context", "voc"]


def test_known_entries() -> None:
    city = get_label_set("Cityscapes")
    assert city.classes[0] == "road" and city.palette[0] == (128, 64, 128)
    assert city.classes[-1] == "bicycle" and city.palette[-1] == (119, 11, 32)
    ade = get_label_set("ade")
    assert ade.classes[7] == "bed"  # upstream has a stray trailing space
    assert ade.classes[-1] == "flag"
    assert get_label_set("pcontext").classes[0] == "aeroplane"
    assert get_label_set("pascal-voc").classes[0] == "background"
    assert get_label_set("cocostuff").classes[-1] == "wood"


def test_voc_palette_is_the_generated_colour_map() -> None:
    voc = get_label_set("voc")
    assert voc.palette == generate_palette(21)
    assert voc.palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    assert voc.palette[20] == (0, 64, 128)


def test_generated_palette_is_distinct() -> None:
    palette = generate_palette(300)
    assert len(set(palette)) == 300


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown label set 'kitti'.*cityscapes"):
        get_label_set("kitti")
    with pytest.raises(ValueError, match="neither a label-set file nor a built-in set"):
        load_label_set("no-such-file.txt")


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"classes": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]]}))
    labels = load_label_set(path)
    assert labels.name == "mine"
    assert labels.classes == ["a", "b"] and labels.palette == [(1, 2, 3), (4, 5, 6)]
    path.write_text(json.dumps({"classes": ["a", "b", "c"]}))
    assert load_label_set(str(path)).palette == generate_palette(3)


def test_load_text_file(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("# my classes\nsky\n\nroad\ncar\n")
    labels = load_label_set(path)
    assert labels.classes == ["sky", "road", "car"]
    assert labels.palette == generate_palette(3)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: invalid JSON"):
        load_label_set(bad)
    mismatch = tmp_path / "mismatch.json"
    mismatch.write_text(json.dumps({"classes": ["a", "b"], "palette": [[1, 2, 3]]}))
    with pytest.raises(ValueError, match="2 classes but 1 palette colours"):
        load_label_set(mismatch)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no class names"):
        load_label_set(empty)


def test_builtin_name_is_loadable_through_load_label_set() -> None:
    assert load_label_set("ade20k") == get_label_set("ade20k")
