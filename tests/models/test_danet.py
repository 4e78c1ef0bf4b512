"""DANet model contract: shapes, aux outputs, any size, exact chunking, config and builders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from models.backbone import stage_dilations
from models.config import DANetConfig
from models.danet import VARIANTS, DANet, build_danet, danet_resnet50, danet_slim


def _randomise(model: DANet, seed: int = 0) -> DANet:
    """Non-zero gammas and non-trivial BN statistics, then eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
        model.head.pam.gamma.fill_(0.8)
        model.head.cam.gamma.fill_(0.5)
    return model.eval()


@pytest.mark.parametrize(("height", "width"), [(8, 8), (33, 45), (57, 30), (64, 64)])
def test_logits_at_input_size_for_any_size(height: int, width: int) -> None:
    model = _randomise(danet_slim(5))
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        logits = model(x)
        fused, pam, cam = model(x, aux=True)
    assert logits.shape == (2, 5, height, width)
    assert pam.shape == cam.shape == logits.shape
    assert torch.equal(logits, fused)
    assert not torch.equal(pam, cam)


@pytest.mark.parametrize(("height", "width"), [(61, 83), (97, 40), (72, 72)])
def test_chunked_model_equals_naive_model(height: int, width: int) -> None:
    """Whole-model logits with the PAM in chunks of 7 queries vs. one N x N matrix."""
    model = _randomise(danet_slim(4, pam_query_chunk=7))
    naive_model = _randomise(danet_slim(4, pam_query_chunk=1_000_000))
    naive_model.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        chunked, naive = model(x), naive_model(x)
    assert (chunked - naive).abs().max().item() <= 1e-5
    assert naive.abs().max() > 1e-2


@pytest.mark.parametrize("align_corners", [True, False])
def test_upsampling_follows_align_corners(align_corners: bool) -> None:
    model = _randomise(danet_slim(3, align_corners=align_corners))
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        low = model.head(model.backbone(x))[0]
        expected = torch.nn.functional.interpolate(
            low, size=(40, 56), mode="bilinear", align_corners=align_corners
        )
        assert torch.allclose(model(x), expected)


def test_training_mode_gives_three_outputs_with_gradients() -> None:
    model = danet_slim(3).train()
    x = torch.randn(2, 3, 24, 32)
    fused, pam, cam = model(x, aux=True)
    (fused.mean() + pam.mean() + cam.mean()).backward()
    assert model.head.pam.gamma.grad is not None and model.head.cam.gamma.grad is not None


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (DANetConfig(depth=50, output_stride=8), [[1] * 3, [1] * 4, [1] + [2] * 5, [2, 4, 4]]),
        (DANetConfig(depth=50, output_stride=16), [[1] * 3, [1] * 4, [1] * 6, [1, 2, 2]]),
        (DANetConfig(depth=101, multi_grid=(4, 8, 16)), [[1] * 3, [1] * 4, [1] + [2] * 22, [4, 8, 16]]),
        (DANetConfig(depth=152, multi_grid=(1, 2)), [[1] * 3, [1] * 8, [1] + [2] * 35, [1, 2, 1]]),
    ],
)
def test_stage_dilations(config: DANetConfig, expected: list[list[int]]) -> None:
    assert stage_dilations(config) == expected


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_every_depth_builds_with_the_real_layout(depth: int) -> None:
    config = DANetConfig(depth=depth, base_width=8, stem_width=8, num_classes=3)
    model = build_danet(config)
    blocks = [len(getattr(model.backbone, f"layer{i}")) for i in range(1, 5)]
    assert tuple(blocks) == config.blocks
    assert model.backbone.out_channels == config.backbone_channels
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 16, 24)).shape == (1, 3, 16, 24)


def test_stems_and_strides() -> None:
    deep = danet_resnet50(19)
    assert [m.out_channels for m in deep.backbone.stem if isinstance(m, torch.nn.Conv2d)] == [64, 64, 128]
    plain = danet_resnet50(19, deep_stem=False)
    assert plain.backbone.stem[0].kernel_size == (7, 7)
    slim = danet_slim(2)
    features = slim.backbone(torch.randn(1, 3, 64, 96))
    assert features.shape[-2:] == (8, 12)  # output stride 8
    os16 = danet_slim(2, output_stride=16)
    assert os16.backbone(torch.randn(1, 3, 64, 96)).shape[-2:] == (4, 6)


def test_head_widths_follow_the_official_rule() -> None:
    model = danet_resnet50(19)
    assert model.head.pam_in[0].out_channels == 512  # 2048 // 4
    assert model.head.pam.query.out_channels == 64  # 512 // 8
    assert model.head.cls_fused.out_channels == 19


def test_builders_differ_only_by_their_argument_dicts() -> None:
    model = danet_resnet50(7, base_width=8, stem_width=8)
    assert model.config == DANetConfig(
        name="danet_resnet50", depth=50, num_classes=7, base_width=8, stem_width=8
    )
    assert set(VARIANTS) >= {
        "danet_resnet18",
        "danet_resnet34",
        "danet_resnet50",
        "danet_resnet101",
        "danet_resnet152",
    }
    slim_params = sum(p.numel() for p in danet_slim(10).parameters())
    assert slim_params < 2_000_000


def test_config_round_trips_through_json() -> None:
    config = DANetConfig(
        depth=101,
        deep_stem=False,
        multi_grid=(4, 8, 16),
        num_classes=2,
        classes=("a", "b"),
        palette=((1, 2, 3), (4, 5, 6)),
        preferred_size=(512, 1024),
        name="x",
    )
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert DANetConfig.from_dict(data) == config
    assert DANetConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"depth": 42}, "depth must be one of"),
        ({"output_stride": 32}, "output_stride must be 8 or 16"),
        ({"num_classes": 3, "classes": ("a",)}, "1 class names for num_classes=3"),
        ({"num_classes": 1, "palette": ((0, 0, 300),)}, "palette entries"),
        ({"multi_grid": ()}, "multi_grid"),
    ],
)
def test_invalid_configs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DANetConfig(**fields)
    with pytest.raises(ValueError, match="unknown DANetConfig keys: \\['bogus'\\]"):
        DANetConfig.from_dict({"bogus": 1})


def test_package_import_does_not_import_torch() -> None:
    code = "import sys, models, models.config, models.labels; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
