"""Official and MMSegmentation checkpoints give the same logits as the upstream forward passes.

The references in ``danet_reference.py`` evaluate the upstream state dicts directly, following the
upstream code literally; the loader has to infer the architecture, map every key and run our model.
Random weights have non-zero gammas and non-trivial BN statistics.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from danet_reference import mmseg_forward, mmseg_state_dict, official_forward, official_state_dict

from models.checkpoints import load_checkpoint

TOLERANCE = 1e-4

# (id, depth, deep_stem, output_stride, multi_grid, widths)
OFFICIAL_CASES = [
    ("r50-deepstem-os8", 50, True, 8, None, {"stem_width": 16, "base": 16}),
    ("r101-os8-mg4-8-16", 101, False, 8, [4, 8, 16], {"base": 16}),
    ("r50-deepstem-os16", 50, True, 16, None, {"stem_width": 16, "base": 16}),
]
MMSEG_CASES = [
    ("r50-v1c-os8", 50, True, 8, None, {"stem_channels": 32, "base": 16}),
    ("r101-v1b-os8-mg4-8-16", 101, False, 8, [4, 8, 16], {"stem_channels": 64, "base": 16}),
    ("r50-v1c-os16", 50, True, 16, None, {"stem_channels": 32, "base": 16}),
    ("r18-v1c-os8-basic", 18, True, 8, None, {"stem_channels": 32, "base": 16, "channels": 48}),
]


def _input(seed: int, multi_grid: list[int] | None = None) -> torch.Tensor:
    # Dilations at least as large as the feature map only ever see padding, so multi-grid cases
    # need a map wider than 16 (here 6x18 at stride 8) to tell 4-8-16 from, say, 4-8-8.
    height, width = (41, 137) if multi_grid else (33, 45)
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _assert_multi_grid_matters(path: Path, os: int, reference: torch.Tensor, x: torch.Tensor) -> None:
    wrong = load_checkpoint(path, output_stride=os, multi_grid=[4, 8, 8]).model
    with torch.no_grad():
        assert (wrong(x) - reference).abs().max().item() > 1e-3


def _compare(loaded_model: torch.nn.Module, reference: tuple[torch.Tensor, ...], x: torch.Tensor) -> None:
    with torch.no_grad():
        fused, pam, cam = loaded_model(x, aux=True)
        plain = loaded_model(x)
    assert fused.shape == reference[0].shape == (1, reference[0].shape[1], *x.shape[2:])
    assert reference[0].abs().max() > 1e-2, "degenerate reference: logits are ~0"
    for ours, theirs in zip((fused, pam, cam), reference, strict=True):
        assert (ours - theirs).abs().max().item() <= TOLERANCE
    assert torch.equal(plain, fused)


@pytest.mark.parametrize(
    ("depth", "deep_stem", "os", "multi_grid", "widths"),
    [case[1:] for case in OFFICIAL_CASES],
    ids=[case[0] for case in OFFICIAL_CASES],
)
def test_official_checkpoint_matches_official_forward(
    tmp_path: Path, depth: int, deep_stem: bool, os: int, multi_grid: list[int] | None, widths: dict
) -> None:
    state = official_state_dict(depth, deep_stem, 19, **widths)
    path = tmp_path / "danet.pth.tar"
    # The official train.py wraps the weights (DataParallel 'module.' prefix kept here on purpose).
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}, "best_pred": 0.5}, path
    )
    loaded = load_checkpoint(path, output_stride=os, multi_grid=multi_grid)
    assert loaded.source_format == "official"
    config = loaded.config
    assert (config.depth, config.deep_stem, config.output_stride) == (depth, deep_stem, os)
    assert config.multi_grid == (tuple(multi_grid) if multi_grid else None)
    assert config.num_classes == 19 and config.classes[0] == "road" and config.align_corners is True
    assert not loaded.model.training
    x = _input(1, multi_grid)
    with torch.no_grad():
        reference = official_forward(state, x, os=os, multi_dilation=multi_grid)
    _compare(loaded.model, reference, x)
    if multi_grid:
        _assert_multi_grid_matters(path, os, reference[0], x)


@pytest.mark.parametrize(
    ("depth", "deep_stem", "os", "multi_grid", "widths"),
    [case[1:] for case in MMSEG_CASES],
    ids=[case[0] for case in MMSEG_CASES],
)
def test_mmseg_checkpoint_matches_mmseg_forward(
    tmp_path: Path, depth: int, deep_stem: bool, os: int, multi_grid: list[int] | None, widths: dict
) -> None:
    state = mmseg_state_dict(depth, deep_stem, 7, **widths)
    path = tmp_path / "danet_mmseg.pth"
    classes = [f"thing{i}" for i in range(7)]
    palette = [[i, 2 * i, 3 * i] for i in range(7)]
    meta = {"CLASSES": classes, "PALETTE": palette, "mmseg_version": "0.x", "config": "model = dict(...)"}
    torch.save({"meta": meta, "state_dict": state}, path)
    loaded = load_checkpoint(path, output_stride=os, multi_grid=multi_grid)
    assert loaded.source_format == "mmseg"
    config = loaded.config
    assert (config.depth, config.deep_stem, config.output_stride) == (depth, deep_stem, os)
    assert config.align_corners is False
    assert list(config.classes) == classes and [list(c) for c in config.palette] == palette
    x = _input(2, multi_grid)
    with torch.no_grad():
        reference = mmseg_forward(state, x, os=os, multi_grid=multi_grid)
    _compare(loaded.model, reference, x)
    if multi_grid:
        _assert_multi_grid_matters(path, os, reference[0], x)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("depth", "deep_stem", "os", "multi_grid"), [(50, True, 8, None), (101, False, 8, [4, 8, 16])]
)
def test_full_width_official_and_mmseg(
    tmp_path: Path, depth: int, deep_stem: bool, os: int, multi_grid: list[int] | None
) -> None:
    """The published widths (stem 64/128, base 64, head 512, PAM 64) for both formats."""
    x = _input(3, multi_grid)
    official = official_state_dict(depth, deep_stem, 19)
    torch.save(official, tmp_path / "official.pth")
    loaded = load_checkpoint(tmp_path / "official.pth", output_stride=os, multi_grid=multi_grid)
    assert loaded.config.inter_channels == 512 and loaded.config.attention_channels == 64
    with torch.no_grad():
        _compare(loaded.model, official_forward(official, x, os=os, multi_dilation=multi_grid), x)
    mm = mmseg_state_dict(depth, deep_stem, 19, stem_channels=64)
    torch.save({"meta": {}, "state_dict": mm}, tmp_path / "mmseg.pth")
    loaded = load_checkpoint(tmp_path / "mmseg.pth", output_stride=os, multi_grid=multi_grid)
    with torch.no_grad():
        _compare(loaded.model, mmseg_forward(mm, x, os=os, multi_grid=multi_grid), x)
