"""The checkpoint matrix: calibrated random upstream checkpoints, many seeds and scales.

Every layout of :data:`tests.export.conftest.REALISTIC_LAYOUTS` (official R50 deep stem OS8, official
R101 7x7 multi-grid 4-8-16, MMSegmentation R50-V1c and R101-V1c, an OS16 variant; the real depths,
strides and dilations at base width 16) with five seeds, each with its classifiers scaled so that
the largest |logit| on the calibration scenes is one of :data:`SCALES` (trained DANets: 20-40;
several hundred is what made the single-sample floor refuse MMSeg checkpoints).

A case is judged exactly as ``danet-export`` judges it with default flags
(:func:`export.verify.verify_against_torch` with :data:`export.verify.DEFAULT_TOLERANCE`, truth and
floor from :func:`export.floor.torch_references`). The graph is the one ``danet-export`` wrote for the
layout's seed-3 checkpoint (the ``realistic`` fixture), with the case's weights written into it by
:func:`tests.export.rebind.rebind` (bit-identical to a fresh export, checked by the tests), because
tracing costs 30-200 s per ResNet-50/101 on a 2-core machine and the graph does not depend on the
weights. Inputs are small (:data:`SHAPES`) to keep the whole matrix within minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from models.checkpoints import LoadedCheckpoint, load_checkpoint
from tests.export.conftest import REALISTIC_LAYOUTS, calibration_batch, reference_module
from tests.export.rebind import rebind

#: max |logit| on the calibration scenes the classifiers are scaled to.
SCALES = (20.0, 50.0, 120.0, 300.0, 600.0)
SEEDS = (0, 1, 2, 4, 5)
#: (batch, height, width): square with a batch of two, non-square, odd; at most 64 pixels a side.
SHAPES = ((2, 40, 40), (1, 48, 64), (1, 41, 57))


def cases() -> list[tuple[str, int, float]]:
    """(layout, seed, scale): every layout x seed, the scales rotated so each layout sees all five."""
    return [
        (layout, seed, SCALES[(index + offset) % len(SCALES)])
        for offset, layout in enumerate(REALISTIC_LAYOUTS)
        for index, seed in enumerate(SEEDS)
    ]


def load_options(layout: str) -> dict[str, Any]:
    """The ``load_checkpoint`` options that the layout's ``danet-export`` flags stand for."""
    flags = REALISTIC_LAYOUTS[layout][3]
    options: dict[str, Any] = {}
    if "--output-stride" in flags:
        options["output_stride"] = int(flags[flags.index("--output-stride") + 1])
    if "--multi-grid" in flags:
        options["multi_grid"] = tuple(int(d) for d in flags[flags.index("--multi-grid") + 1].split(","))
    return options


def write_checkpoint(path: Path, layout: str, seed: int, scale: float) -> Path:
    """A calibrated random upstream checkpoint (``tests/models/danet_reference.py: calibrate``)."""
    ref = reference_module()
    kind, builder, forward, _ = REALISTIC_LAYOUTS[layout]
    make = ref.official_state_dict if kind == "official" else ref.mmseg_state_dict
    state = make(num_classes=19, seed=seed, **builder)
    calibrated = ref.calibrate(state, calibration_batch(), layout=kind, logit_scale=scale, **forward)
    torch.save({"state_dict": calibrated}, path)
    return path


def build_case(
    realistic: Any, folder: Path, layout: str, seed: int, scale: float
) -> tuple[LoadedCheckpoint, onnx.ModelProto]:
    """(the loaded checkpoint, the layout's exported graph carrying its weights)."""
    _, _, report = realistic(layout)
    graph = onnx.load(report["artifacts"][0]["path"])
    checkpoint = write_checkpoint(folder / f"{layout}-{seed}-{scale:g}.pth", layout, seed, scale)
    loaded = load_checkpoint(checkpoint, **load_options(layout))
    return loaded, rebind(graph, loaded.model)
