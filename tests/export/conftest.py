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
