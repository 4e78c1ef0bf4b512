"""Native safetensors checkpoints round-trip; loaders honour overrides and label choices."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from danet_reference import mmseg_state_dict, official_state_dict
from safetensors import safe_open

from models.checkpoints import load_checkpoint
from models.checkpoints.native import save_native
from models.config import DANetConfig
from models.danet import DANet, build_danet
from models.labels import get_label_set


def _model() -> DANet:
    config = DANetConfig(
        depth=18,
        stem_width=8,
        base_width=8,
        num_classes=3,
        classes=("sky", "road", "car"),
        palette=((1, 2, 3), (4, 5, 6), (7, 8, 9)),
        preferred_size=(64, 96),
        name="tiny",
        align_corners=False,
    )
    torch.manual_seed(0)
    model = build_danet(config)
    with torch.no_grad():
        model.head.pam.gamma.fill_(0.3)
        model.head.cam.gamma.fill_(0.2)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and module.running_mean is not None:
                module.running_mean.uniform_(-0.2, 0.2)
    return model.eval()


def test_native_round_trip(tmp_path: Path) -> None:
    model = _model()
    path = save_native(model, model.config, tmp_path / "tiny.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert "danet_config" in (handle.metadata() or {})
    loaded = load_checkpoint(path)
    assert loaded.source_format == "danet-serve"
    assert loaded.config == model.config
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == path
    assert not loaded.model.training
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_native_overrides(tmp_path: Path) -> None:
    model = _model()
    path = save_native(model, model.config, tmp_path / "tiny.safetensors")
    loaded = load_checkpoint(path, output_stride=16, classes=["a", "b", "c"])
    assert loaded.config.output_stride == 16
    assert loaded.config.classes == ("a", "b", "c")
    assert loaded.config.name == "tiny"


def test_official_defaults_and_label_choice(tmp_path: Path) -> None:
    state = official_state_dict(50, False, 150, base=8)
    path = tmp_path / "ade.pth"
    torch.save(state, path)
    loaded = load_checkpoint(path)
    config = loaded.config
    assert (config.output_stride, config.multi_grid, config.deep_stem) == (8, None, False)
    assert list(config.classes) == get_label_set("ade20k").classes  # guessed from 150 classes
    assert config.stem_width == 64 and config.base_width == 8
    custom = load_checkpoint(path, classes=[f"c{i}" for i in range(150)])
    assert custom.config.classes[0] == "c0"


def test_unknown_class_count_gets_generated_names(tmp_path: Path) -> None:
    state = official_state_dict(50, True, 4, stem_width=8, base=8)
    path = tmp_path / "four.pth"
    torch.save(state, path)
    config = load_checkpoint(path).config
    assert config.classes == ("class_0", "class_1", "class_2", "class_3")
    assert len(set(config.palette)) == 4


def test_loaded_official_model_saves_and_reloads_natively(tmp_path: Path) -> None:
    state = official_state_dict(50, True, 19, stem_width=8, base=8)
    torch.save(state, tmp_path / "o.pth")
    first = load_checkpoint(tmp_path / "o.pth", multi_grid=[1, 2, 4])
    native_path = save_native(first.model, first.config, tmp_path / "o.safetensors")
    second = load_checkpoint(native_path)
    assert second.config == first.config
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(first.model(x), second.model(x))


def test_old_official_backbone_classifier_is_ignored(tmp_path: Path) -> None:
    """The 2018-2019 DANet code saved the unused ImageNet ``pretrained.fc`` with the weights."""
    state = official_state_dict(50, False, 19, base=8)
    path = tmp_path / "danet101_2019.pth"
    torch.save(state, path)
    reference = load_checkpoint(path).model
    state["pretrained.fc.weight"] = torch.randn(1000, 256)
    state["pretrained.fc.bias"] = torch.randn(1000)
    torch.save(state, path, _use_new_zipfile_serialization=False)  # PyTorch < 1.6 wrote this format
    loaded = load_checkpoint(path).model
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_mmseg_1x_bookkeeping_objects_are_tolerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MMEngine stores history buffers and numpy values next to the weights; they are skipped inertly."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self) -> None:
            self.log = np.array([1.0, 2.0])

    HistoryBuffer.__module__ = module.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer  # type: ignore[attr-defined]
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    state = mmseg_state_dict(18, True, 2, stem_channels=16, base=8)
    path = tmp_path / "iter_80000.pth"
    checkpoint = {
        "meta": {"dataset_meta": {"classes": ["bg", "fg"], "palette": [[0, 0, 0], [9, 9, 9]]}, "iter": 80000},
        "state_dict": state,
        "message_hub": {"log_scalars": {"loss": HistoryBuffer()}, "best": np.float64(0.5)},
    }
    torch.save(checkpoint, path)
    for name in ("mmengine", "mmengine.logging", module.__name__):
        monkeypatch.delitem(sys.modules, name)  # the reader has no mmengine installed
    loaded = load_checkpoint(path)
    assert loaded.source_format == "mmseg"
    assert loaded.config.classes == ("bg", "fg") and loaded.config.palette[1] == (9, 9, 9)
