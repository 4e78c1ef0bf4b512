"""Procedural street-scene generator for the embedded default model.

Every scene is drawn from its own seed, so a data set is just a range of seeds and needs no storage:
``generate_scene(seed, 128, 128)`` always returns the same ``(image, labels)`` pair. Scenes are built by
painting layers back to front (sky, ground, road, water, buildings, roofs, trees), so later layers
occlude earlier ones and the label map is exact.

The classes are told apart by shape, texture and context rather than by colour alone: water and sky
share their blues (water lies below the horizon and carries horizontal ripples), trees and grass share
greens (trees are blotchy discs), roofs and brick buildings share reds (roofs are shingled triangles,
buildings are windowed rectangles), and roads and concrete buildings share greys.

Pure NumPy + Pillow (no torch), so the data-set writer also works without the training extras.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = ("sky", "ground", "road", "building", "roof", "tree", "water")
PALETTE: tuple[tuple[int, int, int], ...] = (
    (70, 130, 180),  # sky: steel blue
    (152, 200, 90),  # ground: light green
    (128, 64, 128),  # road: purple (the Cityscapes road colour)
    (220, 180, 60),  # building: ochre
    (200, 40, 40),  # roof: red
    (20, 100, 30),  # tree: dark green
    (0, 200, 220),  # water: cyan
)
SKY, GROUND, ROAD, BUILDING, ROOF, TREE, WATER = range(len(CLASSES))
IGNORE_INDEX = 255

#: Stream ids mixed into every scene seed, so that the training and held-out sets never share a scene.
TRAIN_STREAM = 0
HELDOUT_STREAM = 1


@dataclass(frozen=True)
class _Canvas:
    """Float RGB image + label map being painted, with pixel-centre coordinate grids."""

    image: np.ndarray  # float32 [H, W, 3], 0-255 scale
    labels: np.ndarray  # uint8 [H, W]
    yy: np.ndarray  # float32 [H, W] row coordinate
    xx: np.ndarray  # float32 [H, W] column coordinate

    @property
    def height(self) -> int:
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return int(self.labels.shape[1])

    def paint(self, mask: np.ndarray, texture: np.ndarray, label: int) -> None:
        self.image[mask] = texture[mask]
        self.labels[mask] = label

    def crop(self, top: float, bottom: float, left: float, right: float) -> _Canvas:
        """A view of the pixels whose centres may fall in the box: painting it paints the canvas."""
        y0, y1 = max(int(np.floor(top)), 0), min(int(np.ceil(bottom)) + 1, self.height)
        x0, x1 = max(int(np.floor(left)), 0), min(int(np.ceil(right)) + 1, self.width)
        y1, x1 = max(y1, y0), max(x1, x0)
        return _Canvas(
            self.image[y0:y1, x0:x1],
            self.labels[y0:y1, x0:x1],
            self.yy[y0:y1, x0:x1],
            self.xx[y0:y1, x0:x1],
        )


def scene_rng(seed: int, index: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
    """The random generator of scene ``index`` in data set ``seed`` of ``stream`` (train or held-out)."""
    if seed < 0 or index < 0 or stream < 0:
        raise ValueError(f"seed, index and stream must be >= 0, got {seed}, {index}, {stream}")
    return np.random.default_rng([stream, seed, index])


def generate_scene(
    seed: int,
    height: int = 128,
    width: int = 128,
    *,
    index: int = 0,
    stream: int = TRAIN_STREAM,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: ``(image uint8 [H, W, 3] RGB, labels uint8 [H, W])`` with ids into ``CLASSES``."""
    if height < 16 or width < 16:
        raise ValueError(f"scenes need at least 16x16 pixels, got {height}x{width}")
    rng = scene_rng(seed, index, stream)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    canvas = _Canvas(
        image=np.zeros((height, width, 3), np.float32),
        labels=np.zeros((height, width), np.uint8),
        yy=yy,
        xx=xx,
    )
    horizon = float(rng.uniform(0.28, 0.6)) * height
    _paint_sky(canvas, rng, horizon)
    _paint_ground(canvas, rng, horizon)
    if rng.random() < 0.8:
        _paint_road(canvas, rng, horizon)
    for _ in range(int(rng.integers(0, 3))):
        _paint_water(canvas, rng, horizon)
    for _ in range(int(rng.integers(1, 4))):
        _paint_building(canvas, rng, horizon)
    for _ in range(int(rng.integers(0, 4))):
        _paint_tree(canvas, rng, horizon)
    return _finish(canvas, rng), canvas.labels


def iter_scenes(
    count: int,
    *,
    seed: int = 0,
    stream: int = TRAIN_STREAM,
    height: int = 128,
    width: int = 128,
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Scenes ``start .. start+count-1`` of data set ``seed`` in ``stream``."""
    for index in range(start, start + count):
        yield generate_scene(seed, height, width, index=index, stream=stream)


def write_dataset(
    directory: str | Path,
    count: int,
    *,
    seed: int = 0,
    stream: int = TRAIN_STREAM,
    height: int = 128,
    width: int = 128,
) -> Path:
    """Write ``count`` scenes as ``images/NNNNNN.png`` (RGB) + ``labels/NNNNNN.png`` (palette PNG of ids).

    This is the folder layout ``danet-train --data`` reads, so the generator doubles as a worked example
    of a user data set.
    """
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    flat_palette = [channel for colour in PALETTE for channel in colour]
    for index, (image, labels) in enumerate(
        iter_scenes(count, seed=seed, stream=stream, height=height, width=width)
    ):
        Image.fromarray(image, "RGB").save(root / "images" / f"{index:06d}.png")
        label_image = Image.fromarray(labels, "L").convert("P")
        label_image.putpalette(flat_palette)
        label_image.save(root / "labels" / f"{index:06d}.png")
    return root


# --- textures ------------------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, height: int, width: int, step: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: random values on a lattice ``step`` pixels apart, smoothly interpolated."""
    step = max(float(step), 1.0)
    gh, gw = int(np.ceil(height / step)) + 2, int(np.ceil(width / step)) + 2
    lattice = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    ys = np.arange(height, dtype=np.float32) / step
    xs = np.arange(width, dtype=np.float32) / step
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no lattice creases
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    return np.asarray(top * (1 - fy) + bottom * fy, dtype=np.float32)


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float) -> np.ndarray:
    return np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _flat(canvas: _Canvas, colour: np.ndarray) -> np.ndarray:
    return np.broadcast_to(colour, (canvas.height, canvas.width, 3)).astype(np.float32)


def _grain(rng: np.random.Generator, canvas: _Canvas, sigma: float) -> np.ndarray:
    return rng.standard_normal((canvas.height, canvas.width, 1), dtype=np.float32) * np.float32(sigma)


# --- layers --------------------------------------------------------------------------------------------


def _paint_sky(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    short = min(canvas.height, canvas.width)
    sky = canvas.crop(0, horizon + 2, 0, canvas.width)  # the ground below overlaps the seam
    zenith = _jitter(rng, (70, 130, 205), 30)
    haze = _jitter(rng, (165, 195, 225), 25)
    t = np.clip(sky.yy / max(horizon, 1.0), 0, 1)[..., None]
    texture = zenith * (1 - t) + haze * t
    cloud = _value_noise(rng, sky.height, sky.width, short / rng.uniform(2.5, 5.0))
    cover = np.clip((cloud - rng.uniform(0.0, 0.6)) * 3.0, 0, 1)[..., None] * rng.uniform(0.3, 0.9)
    texture = texture * (1 - cover) + _jitter(rng, (235, 238, 242), 12) * cover
    sky.paint(sky.yy < horizon + 2, texture, SKY)


def _paint_ground(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    short = min(canvas.height, canvas.width)
    ground = canvas.crop(horizon, canvas.height, 0, canvas.width)
    # Grass from lush to dry; overlaps the tree greens at the lush end.
    base = np.asarray([rng.uniform(60, 150), rng.uniform(110, 175), rng.uniform(30, 80)], np.float32)
    patches = _value_noise(rng, ground.height, ground.width, short / 10)[..., None] * 14
    blades = _value_noise(rng, ground.height, ground.width, 1.5)[..., None] * 16
    texture = base + patches + blades + _grain(rng, ground, 8)
    ground.paint(ground.yy >= horizon, texture, GROUND)


def _paint_road(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    h, w = canvas.height, canvas.width
    road = canvas.crop(horizon, h, 0, w)
    grey = rng.uniform(75, 135)
    colour = np.asarray([grey, grey, grey], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    texture = (
        colour
        + _grain(rng, road, 7)
        + _value_noise(rng, road.height, road.width, min(h, w) / 6)[..., None] * 8
    )
    paint_colour = (
        _jitter(rng, (235, 225, 170), 20) if rng.random() < 0.5 else _jitter(rng, (240, 240, 240), 12)
    )
    if rng.random() < 0.6:
        # Receding road: a trapezoid from the bottom edge to a vanishing point on the horizon.
        vanish_x = rng.uniform(0.25, 0.75) * w
        half_bottom = rng.uniform(0.25, 0.55) * w
        centre_bottom = vanish_x + rng.uniform(-0.25, 0.25) * w
        top_y = horizon + rng.uniform(0.0, 0.08) * h
        t = np.clip((road.yy - top_y) / max(h - top_y, 1.0), 0, 1)
        centre = vanish_x + (centre_bottom - vanish_x) * t
        half = 0.02 * w + (half_bottom - 0.02 * w) * t
        mask = (road.yy >= top_y) & (np.abs(road.xx - centre) <= half)
        dash_period = rng.uniform(0.08, 0.14) * h
        line = (np.abs(road.xx - centre) <= np.maximum(half * 0.05, 0.6)) & (
            ((road.yy - top_y) % dash_period) < dash_period * 0.55
        )
    else:
        # Cross road: a band running across the ground.
        top = horizon + rng.uniform(0.08, 0.5) * (h - horizon)
        thickness = rng.uniform(0.12, 0.25) * h
        tilt = rng.uniform(-0.12, 0.12)
        offset = road.yy - top - tilt * (road.xx - w / 2)
        mask = (offset >= 0) & (offset <= thickness)
        dash_period = rng.uniform(0.1, 0.2) * w
        line = (np.abs(offset - thickness / 2) <= max(thickness * 0.05, 0.6)) & (
            (road.xx % dash_period) < dash_period * 0.5
        )
    texture = np.where(line[..., None], paint_colour + _grain(rng, road, 5), texture)
    road.paint(mask & (road.yy >= horizon), texture, ROAD)


def _paint_water(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    h, w = canvas.height, canvas.width
    # Shares the sky's blues on purpose: only position and ripples tell them apart.
    colour = np.asarray([rng.uniform(40, 110), rng.uniform(100, 160), rng.uniform(170, 230)], np.float32)
    rx = rng.uniform(0.12, 0.3) * w
    ry = rx * rng.uniform(0.25, 0.5) * h / w
    low, high = horizon + ry * 0.6, h - ry * 0.3
    cy = rng.uniform(low, high) if low < high else h - ry
    cx = rng.uniform(0.1, 0.9) * w
    pond = canvas.crop(max(cy - ry, horizon), cy + ry, cx - rx, cx + rx)
    mask = ((pond.xx - cx) / rx) ** 2 + ((pond.yy - cy) / ry) ** 2 <= 1.0
    period = rng.uniform(3.0, 5.5) * max(h / 128, 0.5)
    wobble = _value_noise(rng, pond.height, pond.width, min(h, w) / 5) * 2.5
    ripples = np.sin(2 * np.pi * (pond.yy + wobble) / period)[..., None]
    sparkle = (rng.random((pond.height, pond.width, 1)) < 0.02).astype(np.float32) * 60
    texture = colour + ripples * 22 + sparkle + _grain(rng, pond, 4)
    pond.paint(mask & (pond.yy >= horizon), texture, WATER)


_FACADES: tuple[tuple[float, float, float], ...] = (
    (150, 150, 150),  # concrete: close to road greys
    (200, 185, 150),  # sandstone
    (160, 80, 60),  # brick: close to roof reds
    (95, 95, 110),  # dark glass
)
_ROOFS: tuple[tuple[float, float, float], ...] = (
    (170, 70, 50),  # terracotta
    (120, 60, 45),  # brown
    (85, 85, 95),  # slate
)


def _paint_building(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    h, w = canvas.height, canvas.width
    bw = rng.uniform(0.18, 0.36) * w
    bh = rng.uniform(0.2, 0.5) * h
    left = rng.uniform(-0.1 * w, w - 0.7 * bw)
    bottom = horizon + rng.uniform(0.0, 0.12) * h
    top = bottom - bh
    wall = canvas.crop(top, bottom, left, left + bw)
    facade = _jitter(rng, _FACADES[int(rng.integers(len(_FACADES)))], 18)
    # Windows: a regular grid of darker or lit panes is the facade's texture.
    cell_x = rng.uniform(0.05, 0.09) * w
    cell_y = rng.uniform(0.06, 0.1) * h
    margin = (1 - rng.uniform(0.45, 0.7)) / 2
    in_x = ((wall.xx - left) % cell_x) / cell_x
    in_y = ((wall.yy - top) % cell_y) / cell_y
    pane = (in_x > margin) & (in_x < 1 - margin) & (in_y > margin) & (in_y < 1 - margin)
    pane_colour = _jitter(rng, (45, 55, 75), 15) if rng.random() < 0.6 else _jitter(rng, (230, 215, 140), 15)
    texture = np.where(pane[..., None], pane_colour, facade) + _grain(rng, wall, 4)
    mask = (wall.xx >= left) & (wall.xx < left + bw) & (wall.yy >= top) & (wall.yy < bottom)
    wall.paint(mask, texture, BUILDING)
    if rng.random() < 0.65:
        _paint_roof(canvas, rng, left, bw, top)


def _paint_roof(canvas: _Canvas, rng: np.random.Generator, left: float, width: float, base: float) -> None:
    overhang = rng.uniform(0.0, 0.08) * width
    x0, x1 = left - overhang, left + width + overhang
    apex_x = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * width
    apex_y = base - rng.uniform(0.4, 0.7) * width
    roof = canvas.crop(apex_y, base, x0, x1)
    # Inside the triangle: below both sloped edges and above the base.
    left_edge = (roof.yy - apex_y) * (apex_x - x0) - (base - apex_y) * (apex_x - roof.xx)
    right_edge = (roof.yy - apex_y) * (x1 - apex_x) - (base - apex_y) * (roof.xx - apex_x)
    mask = (roof.yy < base + 0.5) & (left_edge >= 0) & (right_edge >= 0)
    colour = _jitter(rng, _ROOFS[int(rng.integers(len(_ROOFS)))], 18)
    period = rng.uniform(0.025, 0.04) * canvas.height + 1.5
    shingles = ((roof.yy - apex_y) % period) < 1.0
    texture = colour - shingles[..., None] * rng.uniform(30, 50) + _grain(rng, roof, 5)
    roof.paint(mask, texture, ROOF)


def _paint_tree(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    h, w = canvas.height, canvas.width
    radius = rng.uniform(0.09, 0.17) * min(h, w)
    cx = rng.uniform(0.0, 1.0) * w
    cy = rng.uniform(horizon - radius, h - radius * 0.5)
    reach = radius * 1.6  # the largest disc offset plus its radius
    crown = canvas.crop(cy - reach, cy + reach, cx - reach, cx + reach)
    mask = np.zeros((crown.height, crown.width), bool)
    # A canopy of one to three overlapping discs gives round but irregular outlines.
    for _ in range(int(rng.integers(1, 4))):
        r = radius * rng.uniform(0.7, 1.0)
        ox, oy = rng.uniform(-0.6, 0.6) * radius, rng.uniform(-0.4, 0.4) * radius
        mask |= (crown.xx - cx - ox) ** 2 + (crown.yy - cy - oy) ** 2 <= r * r
    colour = np.asarray([rng.uniform(25, 80), rng.uniform(75, 135), rng.uniform(20, 60)], np.float32)
    blotches = _value_noise(rng, crown.height, crown.width, radius * 0.35)[..., None]
    leaves = (rng.random((crown.height, crown.width, 1)) < 0.08).astype(np.float32)
    shade = np.clip((crown.yy - cy) / radius, -1, 1)[..., None] * -18
    texture = colour + blotches * 30 + leaves * 35 + shade + _grain(rng, crown, 4)
    crown.paint(mask, texture, TREE)


def _finish(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Camera effects shared by every class: exposure, colour cast and sensor noise."""
    gain = rng.uniform(0.85, 1.15)
    cast = rng.uniform(-10, 10, 3).astype(np.float32)
    noise = rng.standard_normal(canvas.image.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 7.0))
    out = canvas.image * gain + cast + noise
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
