"""The procedural scene generator: deterministic, well-formed, every class present, not colour-separable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import synthetic
from models.data import find_pairs, read_image, read_label


def test_same_seed_same_scene_and_different_seeds_differ() -> None:
    first = synthetic.generate_scene(3, 48, 64, index=5)
    again = synthetic.generate_scene(3, 48, 64, index=5)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    for other in (
        synthetic.generate_scene(3, 48, 64, index=6),
        synthetic.generate_scene(4, 48, 64, index=5),
        synthetic.generate_scene(3, 48, 64, index=5, stream=synthetic.HELDOUT_STREAM),
    ):
        assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize(("height", "width"), [(16, 16), (40, 72), (97, 33)])
def test_shapes_dtypes_and_label_range(height: int, width: int) -> None:
    image, labels = synthetic.generate_scene(0, height, width, index=1)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert labels.shape == (height, width) and labels.dtype == np.uint8
    assert labels.max() < len(synthetic.CLASSES)


def test_class_names_and_palette() -> None:
    assert len(synthetic.CLASSES) == len(synthetic.PALETTE) >= 6
    assert len(set(synthetic.CLASSES)) == len(synthetic.CLASSES)
    assert len(set(synthetic.PALETTE)) == len(synthetic.PALETTE)
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in synthetic.PALETTE)
    assert synthetic.CLASSES[synthetic.WATER] == "water" and synthetic.CLASSES[synthetic.SKY] == "sky"


def test_every_class_occurs_with_a_useful_share() -> None:
    counts = np.zeros(len(synthetic.CLASSES), np.int64)
    for _, labels in synthetic.iter_scenes(40, seed=1, height=64, width=64):
        counts += np.bincount(labels.ravel(), minlength=len(synthetic.CLASSES))
    shares = counts / counts.sum()
    assert shares.min() > 0.005, dict(zip(synthetic.CLASSES, shares.round(4), strict=True))


def test_scenes_vary_in_layout() -> None:
    skies = [(labels == synthetic.SKY).mean() for _, labels in synthetic.iter_scenes(20, height=48, width=48)]
    assert max(skies) - min(skies) > 0.15  # the horizon moves


def test_pixel_colour_alone_does_not_solve_it() -> None:
    """The best per-pixel colour classifier (a 16^3-bin colour histogram) stays far from the model's mIoU."""
    bins, k = 16, len(synthetic.CLASSES)
    votes = np.zeros((bins, bins, bins, k), np.int64)
    for image, labels in synthetic.iter_scenes(60, seed=0, height=48, width=48):
        q = (image // (256 // bins)).reshape(-1, 3)
        np.add.at(votes, (q[:, 0], q[:, 1], q[:, 2], labels.ravel()), 1)
    table = votes.argmax(-1)
    confusion = np.zeros((k, k), np.int64)
    for image, labels in synthetic.iter_scenes(
        20, seed=0, stream=synthetic.HELDOUT_STREAM, height=48, width=48
    ):
        q = (image // (256 // bins)).reshape(-1, 3)
        np.add.at(confusion, (labels.ravel(), table[q[:, 0], q[:, 1], q[:, 2]]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    miou = float((tp[union > 0] / union[union > 0]).mean())
    assert miou < 0.75, miou


def test_write_dataset_round_trips(tmp_path: Path) -> None:
    root = synthetic.write_dataset(tmp_path / "scenes", 3, seed=2, height=32, width=40)
    pairs = find_pairs(root)
    assert [p[0].name for p in pairs] == ["000000.png", "000001.png", "000002.png"]
    for index, (image_path, label_path) in enumerate(pairs):
        image, labels = synthetic.generate_scene(2, 32, 40, index=index)
        assert np.array_equal(read_image(image_path), image)
        assert np.array_equal(read_label(label_path), labels)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="16x16"):
        synthetic.generate_scene(0, 8, 64)
    with pytest.raises(ValueError, match=">= 0"):
        synthetic.scene_rng(-1, 0)
