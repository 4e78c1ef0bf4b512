"""Shared fixtures: tiny checkpoints of every format and one verified export, built once per session.

The networks are DANet-ResNet18 at width 8 (a few hundred kB); inputs stay below 100x150 pixels.
Official and MMSegmentation state dicts come from the models tests' upstream-layout generators
(``tests/models/danet_reference.py``), so the export sees the same key layouts as the loader tests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from models.checkpoints import LoadedCheckpoint, load_checkpoint
from models.checkpoints.native import save_native
from models.config import DANetConfig
from models.danet import DANet, build_danet
from models.synthetic import CLASSES, PALETTE

TINY_FIELDS: dict[str, Any] = {"depth": 18, "base_width": 8, "stem_width": 8, "deep_stem": True}


def tiny_config(**overrides: Any) -> DANetConfig:
    fields = {
        **TINY_FIELDS,
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "palette": PALETTE,
        "name": "tiny",
        "preferred_size": (96, 128),
        **overrides,
    }
    return DANetConfig(**fields)


def randomise(model: DANet, seed: int = 0) -> DANet:
    """Non-trivial BN statistics and attention gammas, so every part of the graph matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(module.num_features, generator=generator))
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
        gamma = getattr(module, "gamma", None)
        if isinstance(gamma, torch.nn.Parameter):
            gamma.data.fill_(0.7)
    # Default-initialised classifiers give near-constant logits; make them depend on the features.
    for name, module in model.named_modules():
        if name.startswith("head.cls_") and isinstance(module, torch.nn.Conv2d):
            module.weight.data.normal_(0.0, 0.5, generator=generator)
            assert module.bias is not None
            module.bias.data.zero_()
    return model.eval()


def write_native(path: Path, config: DANetConfig, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    with torch.no_grad():
        model = randomise(build_danet(config), seed)
    return save_native(model, config, path)


def reference_module() -> ModuleType:
    """tests/models/danet_reference.py (upstream key layouts), loaded by path."""
    path = Path(__file__).resolve().parents[1] / "models" / "danet_reference.py"
    spec = importlib.util.spec_from_file_location("danet_reference_for_export", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    """The CI box is small and shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_native(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", tiny_config())


@pytest.fixture(scope="session")
def tiny_loaded(tiny_checkpoint: Path) -> LoadedCheckpoint:
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, tiny_loaded: LoadedCheckpoint) -> Any:
    """The verified fp32 export of the tiny checkpoint, without the logits output (the default)."""
    from export.onnx_export import export_onnx

    return export_onnx(tiny_loaded, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


# --------------------------------------------------------------------------- trained-scale checkpoints
#: layout -> (upstream format, state-dict builder arguments, upstream forward arguments, export flags).
#: Reduced widths (base 16) keep the real depths, strides, dilations and key layouts.
REALISTIC_LAYOUTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], list[str]]] = {
    "official-r50-deepstem-os8": (
        "official",
        {"depth": 50, "deep_stem": True, "stem_width": 16, "base": 16},
        {"os": 8},
        [],
    ),
    "official-r101-7x7-os8-mg4-8-16": (
        "official",
        {"depth": 101, "deep_stem": False, "base": 16},
        {"os": 8, "multi_dilation": [4, 8, 16]},
        ["--multi-grid", "4,8,16"],
    ),
    "mmseg-r50-v1c-os8": (
        "mmseg",
        {"depth": 50, "deep_stem": True, "stem_channels": 32, "base": 16},
        {"os": 8},
        [],
    ),
    "mmseg-r101-v1c-os8": (
        "mmseg",
        {"depth": 101, "deep_stem": True, "stem_channels": 32, "base": 16},
        {"os": 8},
        [],
    ),
    "official-r50-deepstem-os16": (
        "official",
        {"depth": 50, "deep_stem": True, "stem_width": 16, "base": 16},
        {"os": 16},
        ["--output-stride", "16"],
    ),
}


def normalised(batch: Any) -> torch.Tensor:
    """uint8 NHWC -> float64 NCHW normalised with the ImageNet statistics (both upstreams' choice)."""
    from models.config import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (torch.from_numpy(batch).permute(0, 3, 1, 2).double() - mean) / std


def calibration_batch() -> torch.Tensor:
    """Four street scenes, normalised: what the BN statistics of the random checkpoints are set from."""
    import numpy as np

    from export.verify import make_inputs

    return normalised(np.concatenate(make_inputs([(4, 96, 128)], seed=7)))


def realistic_state_dict(layout: str) -> dict[str, torch.Tensor]:
    """A random upstream state dict with calibrated BN statistics and trained-scale logits."""
    ref = reference_module()
    kind, builder, forward, _ = REALISTIC_LAYOUTS[layout]
    make = ref.official_state_dict if kind == "official" else ref.mmseg_state_dict
    state = make(num_classes=19, seed=3, **builder)
    calibrated: dict[str, torch.Tensor] = ref.calibrate(state, calibration_batch(), layout=kind, **forward)
    return calibrated


@pytest.fixture(scope="session")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``realistic(layout)`` -> (checkpoint path, state dict, JSON report of a default-flag ``danet-export``).

    Built once per layout and session: the export tests and the mutation tests share them.
    """
    import contextlib
    import io
    import json

    from export.cli import main

    cache: dict[str, tuple[Path, dict[str, torch.Tensor], dict[str, Any]]] = {}

    def build(layout: str) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
        if layout not in cache:
            folder = tmp_path_factory.mktemp(layout)
            state = realistic_state_dict(layout)
            checkpoint = folder / "danet.pth"
            torch.save({"state_dict": state}, checkpoint)
            flags = REALISTIC_LAYOUTS[layout][3]
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                status = main([str(checkpoint), "--output", str(folder / "danet.onnx"), "--json", *flags])
            assert status == 0, f"default-flag danet-export refused {layout}"
            cache[layout] = (checkpoint, state, json.loads(stdout.getvalue()))
        return cache[layout]

    return build
