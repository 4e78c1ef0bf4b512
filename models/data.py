"""Training data for ``danet-train``: procedural scenes or a folder of images + label PNGs.

Both sources hand out batches as NumPy arrays (``images`` uint8 [N, H, W, 3], ``labels`` uint8 or
uint16 [N, H, W]) chosen *only* by ``(seed, epoch, step)``, so an interrupted run that resumes at an
epoch boundary sees exactly the batches it would have seen. No torch here.

Folder layout (the one :func:`models.synthetic.write_dataset` writes)::

    DIR/images/NAME.(png|jpg|jpeg|bmp|webp)
    DIR/labels/NAME.png     # class ids per pixel: mode L, P (palette indices) or I;16; 255 = ignore
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from models import synthetic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IGNORE_INDEX = 255


class DatasetError(ValueError):
    """A data folder that cannot be used, with the path and the reason."""


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # integer [N, H, W]; IGNORE_INDEX marks unlabelled pixels


class BatchSource(Protocol):
    """What the training loop needs from a data source."""

    def batch(self, epoch: int, step: int, batch_size: int) -> Batch: ...

    def describe(self) -> dict[str, object]: ...


# --- procedural scenes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSource:
    """Fresh procedural scenes every step: scene ids ``(epoch * epoch_size + step * batch + i)``."""

    seed: int
    size: tuple[int, int]
    epoch_size: int
    stream: int = synthetic.TRAIN_STREAM

    def batch(self, epoch: int, step: int, batch_size: int) -> Batch:
        start = epoch * self.epoch_size + step * batch_size
        return scene_batch(
            range(start, start + batch_size), seed=self.seed, size=self.size, stream=self.stream
        )

    def describe(self) -> dict[str, object]:
        return {"kind": "synthetic", "seed": self.seed, "stream": self.stream, "size": list(self.size)}


def scene_batch(
    indices: range | list[int], *, seed: int, size: tuple[int, int], stream: int = synthetic.TRAIN_STREAM
) -> Batch:
    """The scenes ``indices`` of data set ``seed`` in ``stream``, stacked."""
    pairs = [synthetic.generate_scene(seed, size[0], size[1], index=i, stream=stream) for i in indices]
    return Batch(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))


# --- folder of images + label PNGs --------------------------------------------------------------------------


def find_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of ``root/images`` and ``root/labels`` matched by file stem."""
    root = Path(root)
    image_dir, label_dir = root / "images", root / "labels"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(f"{root}: expected folders images/ and labels/, {folder.name}/ is missing")
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"}
    pairs: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for image in sorted(image_dir.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem in labels:
            pairs.append((image, labels[image.stem]))
        else:
            missing.append(image.name)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"{root}: {len(missing)} image(s) without labels/<name>.png: {shown}")
    if not pairs:
        raise DatasetError(f"{root}: no images found in images/ (looked for {', '.join(IMAGE_SUFFIXES)})")
    return pairs


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 [H, W, 3] array."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def read_label(path: Path) -> np.ndarray:
    """Class ids [H, W] from a single-channel PNG (palette indices count as ids)."""
    with Image.open(path) as img:
        if img.mode in ("L", "P"):
            return np.array(img, dtype=np.uint8)
        if img.mode in ("I", "I;16", "I;16B", "I;16L"):
            return np.asarray(img, dtype=np.int64).astype(np.uint16)
        raise DatasetError(
            f"{path}: label PNGs must hold class ids (mode L, P or I;16), got mode {img.mode}; "
            "colour-coded label images need converting to ids first"
        )


def check_labels(label: np.ndarray, num_classes: int, path: Path, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise :class:`DatasetError` if ``label`` holds ids outside ``0..num_classes-1`` (and the ignore id)."""
    values = np.unique(label)
    bad = [int(v) for v in values if v >= num_classes and v != ignore_index]
    if bad:
        raise DatasetError(
            f"{path}: label ids {bad[:10]} are outside 0..{num_classes - 1} (and {ignore_index} = ignore); "
            "check --classes"
        )


def _resize_pair(
    image: np.ndarray, label: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    img = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    lab = Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(img), np.asarray(lab)


def augment(
    image: np.ndarray,
    label: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (1.0, 1.5),
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale (so the crop covers ``scale_range`` of the short side), crop to ``size`` and flip.

    Crops larger than the rescaled image are padded with zeros / ``ignore_index``.
    """
    crop_h, crop_w = size
    h, w = label.shape
    scale = rng.uniform(*scale_range) * max(crop_h / h, crop_w / w)
    new_h, new_w = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
    image, label = _resize_pair(image, label, new_h, new_w)
    out_img = np.zeros((crop_h, crop_w, 3), np.uint8)
    out_lab = np.full((crop_h, crop_w), ignore_index, label.dtype)
    top = int(rng.integers(0, max(new_h - crop_h, 0) + 1))
    left = int(rng.integers(0, max(new_w - crop_w, 0) + 1))
    patch_img = image[top : top + crop_h, left : left + crop_w]
    patch_lab = label[top : top + crop_h, left : left + crop_w]
    out_img[: patch_img.shape[0], : patch_img.shape[1]] = patch_img
    out_lab[: patch_lab.shape[0], : patch_lab.shape[1]] = patch_lab
    if rng.random() < 0.5:
        out_img, out_lab = out_img[:, ::-1], out_lab[:, ::-1]
    return np.ascontiguousarray(out_img), np.ascontiguousarray(out_lab)


class FolderSource:
    """Random crops of a folder data set; every epoch is a seeded permutation of the files."""

    def __init__(
        self,
        root: str | Path,
        *,
        size: tuple[int, int],
        num_classes: int,
        seed: int = 0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.root = Path(root)
        self.pairs = find_pairs(self.root)
        self.size = size
        self.num_classes = num_classes
        self.seed = seed
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, epoch: int, step: int, batch_size: int) -> Batch:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        images, labels = [], []
        for slot in range(step * batch_size, (step + 1) * batch_size):
            index = int(order[slot % len(order)])
            image_path, label_path = self.pairs[index]
            image, label = read_image(image_path), read_label(label_path)
            if image.shape[:2] != label.shape:
                raise DatasetError(
                    f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but its label is "
                    f"{label.shape[1]}x{label.shape[0]}"
                )
            check_labels(label, self.num_classes, label_path, self.ignore_index)
            rng = np.random.default_rng([self.seed, epoch, slot])
            image, label = augment(image, label, self.size, rng, ignore_index=self.ignore_index)
            images.append(image)
            labels.append(label)
        return Batch(np.stack(images), np.stack(labels))

    def describe(self) -> dict[str, object]:
        return {"kind": "folder", "root": str(self.root), "images": len(self.pairs), "crop": list(self.size)}

    def load_all(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every ``(image, label)`` at full resolution (for evaluation)."""
        out = []
        for image_path, label_path in self.pairs:
            label = read_label(label_path)
            check_labels(label, self.num_classes, label_path, self.ignore_index)
            out.append((read_image(image_path), label))
        return out
