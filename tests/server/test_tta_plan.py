"""Preset parameters: request > model eval metadata > the procedure's own defaults; procedure sizes."""

from __future__ import annotations

import pytest

from server.errors import PayloadTooLarge
from server.segmentation.cost import Limits
from server.segmentation.options import SegmentOptions
from server.segmentation.tta import mmseg_ratio_size, mmseg_rescale, official_scale_size, plan_preset

CITYSCAPES = {"base_size": (2048, 2048), "crop_size": (768, 768)}


def plan(options: SegmentOptions, defaults: dict[str, tuple[int, int]], size: tuple[int, int] = (1024, 2048)):
    return plan_preset(
        options,
        size,
        defaults,
        preferred_size=(512, 512),
        align_corners=False,
        limits=Limits(40_000_000, 2048, 100_000_000, 256),
    )


def test_official_cityscapes_from_metadata() -> None:
    got = plan(SegmentOptions(tta="official"), CITYSCAPES)
    assert (got.base_size, got.crop_size, got.stride) == ((2048, 2048), (768, 768), (512, 512))
    assert got.flip is True and got.scales == (1.0,) and got.align_corners is True
    explicit = plan(SegmentOptions(tta="official", crop_size=512, flip=False), CITYSCAPES)
    assert explicit.crop_size == (512, 512) and explicit.stride == (341, 341) and explicit.flip is False


def test_mmseg_defaults() -> None:
    single = plan(SegmentOptions(tta="mmseg"), {"base_size": (2048, 1024)})
    assert single.base_size == (2048, 1024) and single.crop_size is None and single.flip is False
    tta = plan(SegmentOptions(tta="mmseg", scales=(0.5, 1.0)), {"base_size": (2048, 1024), **CITYSCAPES})
    assert tta.base_size is None  # the TTA pipeline resizes by ratios of the original image
    assert tta.crop_size == (768, 768) and tta.stride == (512, 512)
    with pytest.raises(PayloadTooLarge, match="max_pixels"):
        plan(SegmentOptions(tta="mmseg", scales=(4.0,)), {}, size=(4000, 4000))


def test_preset_cost_counts_every_window_and_flip() -> None:
    """The official Cityscapes evaluation (6 scales, flip, crop 768, stride 512) of a 1024x2048 image is 124
    passes of 768x768 (73 M pixels): within the defaults; a stride of 96 is refused by its pass count."""
    options = SegmentOptions(tta="official", scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
    plan(options, {"base_size": (2048, 2048), "crop_size": (768, 768), "stride": (512, 512)})
    with pytest.raises(PayloadTooLarge, match=r"needs \d+ model passes; the server's limit is 256"):
        plan(
            SegmentOptions(tta="official", scales=(1.0, 1.75), crop_size=768, stride=96),
            {"base_size": (2048, 2048)},
        )


def test_procedure_sizes() -> None:
    # MultiEvalModule: long side ceil(base * scale), short side rounded half up
    assert official_scale_size(1024, 2048, 2048, 0.75) == (768, 1536, 1536, 768)
    assert official_scale_size(70, 110, 96, 1.0) == (61, 96, 96, 61)
    assert official_scale_size(110, 70, 128, 0.75) == (96, 61, 96, 61)
    # mmcv Resize(scale=(2048, 1024), keep_ratio=True) and Resize(scale_factor=r, keep_ratio=True)
    assert mmseg_rescale(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert mmseg_rescale(512, 683, (2048, 512)) == (512, 683)
    assert mmseg_ratio_size(1024, 2048, 0.75) == (768, 1536)
    assert mmseg_ratio_size(375, 500, 1.75) == (656, 875)
