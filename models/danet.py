"""DANet: dilated ResNet + dual attention head (Fu et al., CVPR 2019, arXiv 1809.02983).

Parts first (:class:`DANetHead`), then the model (:class:`DANet`), then the builders, which differ
only by a small dict of arguments.

Forward contract: ``model(x)`` takes a float32 ``[N, 3, H, W]`` batch that is already normalised
with ``config.mean``/``config.std`` (0-255 scale) and returns logits ``[N, num_classes, H, W]``,
bilinearly upsampled to the input size with ``config.align_corners``. ``model(x, aux=True)`` returns
``(fused, pam_only, cam_only)``, all at the input size (the three outputs the official code trains).
Any ``H, W >= 8`` works.

Exporters: the position attention lives at ``model.head.pam`` (see
:class:`models.attention.PositionAttention` for ``query_chunk`` / ``export_chunks``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import ChannelAttention, PositionAttention
from models.backbone import DilatedResNet
from models.config import DANetConfig

__all__ = [
    "DANet",
    "DANetHead",
    "VARIANTS",
    "build_danet",
    "danet_resnet18",
    "danet_resnet34",
    "danet_resnet50",
    "danet_resnet101",
    "danet_resnet152",
    "danet_slim",
]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DANetHead(nn.Module):
    """Two attention branches over the backbone features, fused by summation.

    Official names in brackets: ``pam_in`` (conv5a) -> ``pam`` (sa) -> ``pam_out`` (conv51) and
    ``cam_in`` (conv5c) -> ``cam`` (sc) -> ``cam_out`` (conv52); classifiers ``cls_fused`` (conv8),
    ``cls_pam`` (conv6), ``cls_cam`` (conv7), each preceded by Dropout2d(0.1) in training.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int,
        key_channels: int,
        num_classes: int,
        *,
        query_chunk: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pam_in = _conv_bn_relu(in_channels, inter_channels)
        self.pam = PositionAttention(inter_channels, key_channels, query_chunk=query_chunk)
        self.pam_out = _conv_bn_relu(inter_channels, inter_channels)
        self.cam_in = _conv_bn_relu(in_channels, inter_channels)
        self.cam = ChannelAttention()
        self.cam_out = _conv_bn_relu(inter_channels, inter_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.cls_fused = nn.Conv2d(inter_channels, num_classes, 1)
        self.cls_pam = nn.Conv2d(inter_channels, num_classes, 1)
        self.cls_cam = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, x: Tensor, aux: bool = False) -> tuple[Tensor, ...]:
        """``(fused,)`` or, with ``aux``, ``(fused, pam_only, cam_only)`` at feature resolution."""
        pam_feat = self.pam_out(self.pam(self.pam_in(x)))
        cam_feat = self.cam_out(self.cam(self.cam_in(x)))
        fused = self.cls_fused(self.dropout(pam_feat + cam_feat))
        if not aux:
            return (fused,)
        return fused, self.cls_pam(self.dropout(pam_feat)), self.cls_cam(self.dropout(cam_feat))


class DANet(nn.Module):
    """Dual Attention Network for semantic segmentation, built from a :class:`DANetConfig`."""

    def __init__(self, config: DANetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = DilatedResNet(config)
        self.head = DANetHead(
            self.backbone.out_channels,
            config.inter_channels,
            config.attention_channels,
            config.num_classes,
            query_chunk=config.pam_query_chunk,
        )

    def forward(self, x: Tensor, aux: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        size = x.shape[-2:]
        outputs = self.head(self.backbone(x), aux=aux)
        upsampled = [
            F.interpolate(out, size=size, mode="bilinear", align_corners=self.config.align_corners)
            for out in outputs
        ]
        if aux:
            return upsampled[0], upsampled[1], upsampled[2]
        return upsampled[0]


def build_danet(config: DANetConfig) -> DANet:
    """A freshly initialised DANet for ``config`` (training mode, as any new nn.Module)."""
    return DANet(config)


#: Variant name -> the config fields that define it.
VARIANTS: dict[str, dict[str, Any]] = {
    "danet_resnet18": {"depth": 18},
    "danet_resnet34": {"depth": 34},
    "danet_resnet50": {"depth": 50},
    "danet_resnet101": {"depth": 101},
    "danet_resnet152": {"depth": 152},
    # A few-MB network that trains on CPU: ResNet-18 layout at a quarter of the width.
    "danet_slim": {"depth": 18, "deep_stem": True, "stem_width": 16, "base_width": 16},
}


def _build_variant(variant: str, num_classes: int, overrides: dict[str, Any]) -> DANet:
    fields = {"name": variant, **VARIANTS[variant], "num_classes": num_classes, **overrides}
    return DANet(DANetConfig(**fields))


def danet_resnet18(num_classes: int = 19, **overrides: Any) -> DANet:
    """DANet on a dilated ResNet-18; ``overrides`` are :class:`DANetConfig` fields."""
    return _build_variant("danet_resnet18", num_classes, overrides)


def danet_resnet34(num_classes: int = 19, **overrides: Any) -> DANet:
    """DANet on a dilated ResNet-34; ``overrides`` are :class:`DANetConfig` fields."""
    return _build_variant("danet_resnet34", num_classes, overrides)


def danet_resnet50(num_classes: int = 19, **overrides: Any) -> DANet:
    """DANet on a dilated ResNet-50; ``overrides`` are :class:`DANetConfig` fields."""
    return _build_variant("danet_resnet50", num_classes, overrides)


def danet_resnet101(num_classes: int = 19, **overrides: Any) -> DANet:
    """DANet on a dilated ResNet-101; ``overrides`` are :class:`DANetConfig` fields."""
    return _build_variant("danet_resnet101", num_classes, overrides)


def danet_resnet152(num_classes: int = 19, **overrides: Any) -> DANet:
    """DANet on a dilated ResNet-152; ``overrides`` are :class:`DANetConfig` fields."""
    return _build_variant("danet_resnet152", num_classes, overrides)


def danet_slim(num_classes: int = 19, **overrides: Any) -> DANet:
    """A slim DANet (ResNet-18 layout, base width 16) for CPU training; ``overrides`` as above."""
    return _build_variant("danet_slim", num_classes, overrides)
