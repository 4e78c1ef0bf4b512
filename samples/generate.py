"""Write the sample pictures under ``samples/`` and their expected maps: ``python -m samples.generate``.

Three procedural street scenes from :mod:`models.synthetic` (the kind the default model was trained on)
at three sizes, and one photo-like picture: a larger scene seen through a soft lens, with uneven light,
vignetting and JPEG compression. Each ``NAME.jpg`` comes with ``NAME.labels.png``, the exact
class map (a palette PNG: pixel value = class id, colours = the default model's palette).

The scenes come from the held-out stream, which training never draws from, so they show what the model
does on pictures it has not seen. Deterministic: the same files every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from models.synthetic import HELDOUT_STREAM, PALETTE, generate_scene

HERE = Path(__file__).resolve().parent
#: name -> (seed, height, width); the default model is trained at 160x160.
SCENES: dict[str, tuple[int, int, int]] = {
    "street-160": (1, 160, 160),
    "street-320x240": (2, 240, 320),
    "street-640x480": (3, 480, 640),
}
PHOTO = ("photo-1024x768", 4, 768, 1024)


def save_labels(labels: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(labels, "L").convert("P")
    picture.putpalette([channel for colour in PALETTE for channel in colour])
    picture.save(path, optimize=True)


def photo_like(image: np.ndarray) -> Image.Image:
    """A soft lens, light falling off to one side and to the corners: what a camera adds to a scene."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (yy / height - 0.5), (xx / width - 0.5)
    vignette = 1.0 - 0.55 * (cx * cx + cy * cy)
    light = 1.08 - 0.2 * (xx / width)
    lit = image.astype(np.float32) * (vignette * light)[..., None]
    picture = Image.fromarray(np.clip(np.rint(lit), 0, 255).astype(np.uint8), "RGB")
    return picture.filter(ImageFilter.GaussianBlur(1.2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE, help=f"folder (default {HERE})")
    out = parser.parse_args(argv).output
    out.mkdir(parents=True, exist_ok=True)
    for name, (seed, height, width) in SCENES.items():
        image, labels = generate_scene(seed, height, width, stream=HELDOUT_STREAM)
        Image.fromarray(image, "RGB").save(out / f"{name}.jpg", quality=85, optimize=True)
        save_labels(labels, out / f"{name}.labels.png")
    name, seed, height, width = PHOTO
    image, labels = generate_scene(seed, height, width, stream=HELDOUT_STREAM)
    photo_like(image).save(out / f"{name}.jpg", quality=80, optimize=True)
    save_labels(labels, out / f"{name}.labels.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
