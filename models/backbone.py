"""Dilated ResNet backbone for DANet.

Covers what the official DANet code (PyTorch-Encoding ``ResNet``) and MMSegmentation
(``ResNet``/``ResNetV1c`` with ``contract_dilation``) build: depths 18/34/50/101/152, the 7x7 or the
deep 3x3 stem, output stride 8 or 16, multi-grid dilations for layer4 and a configurable width.
Strides sit on the 3x3 convolution ("pytorch" style) and downsampling shortcuts are a strided 1x1
convolution + BN, as in both sources.

Module names (``stem.{0,1,3,4,6,7}``, ``layerN.i.conv1/bn1/...``, ``layerN.0.downsample.{0,1}``)
are close to MMSegmentation's so that checkpoint adapters stay small.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.config import DANetConfig

__all__ = ["BasicBlock", "Bottleneck", "DilatedResNet", "stage_dilations"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions. As in MMSegmentation, only the first one is dilated."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, dilated) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# (strides, dilations) of layer1..layer4 for each output stride.
_OUTPUT_STRIDE_PLANS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
}


def stage_dilations(config: DANetConfig) -> list[list[int]]:
    """Dilation of every block, per stage.

    A dilated stage's first block uses half the stage dilation (official ``_make_layer``,
    MMSegmentation ``contract_dilation=True``); with ``multi_grid`` layer4 block *i* uses
    ``multi_grid[i % len(multi_grid)]`` (official ``multi_dilation``).
    """
    _, dilations = _OUTPUT_STRIDE_PLANS[config.output_stride]
    plan: list[list[int]] = []
    for stage, (num_blocks, dilation) in enumerate(zip(config.blocks, dilations, strict=True)):
        if stage == 3 and config.multi_grid is not None:
            grid = config.multi_grid
            plan.append([grid[i % len(grid)] for i in range(num_blocks)])
        else:
            first = dilation // 2 if dilation > 1 else dilation
            plan.append([first] + [dilation] * (num_blocks - 1))
    return plan


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class DilatedResNet(nn.Module):
    """ResNet without the classifier, returning the layer4 features (stride 8 or 16)."""

    def __init__(self, config: DANetConfig) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if config.bottleneck else BasicBlock
        if config.deep_stem:
            width = config.stem_width
            stem = (
                _conv_bn_relu(3, width, 3, 2)
                + _conv_bn_relu(width, width, 3, 1)
                + _conv_bn_relu(width, 2 * width, 3, 1)
            )
        else:
            stem = _conv_bn_relu(3, config.stem_width, 7, 2)
        self.stem = nn.Sequential(*stem)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        strides, _ = _OUTPUT_STRIDE_PLANS[config.output_stride]
        inplanes = config.stem_channels
        stages: list[nn.Sequential] = []
        for stage, dilations in enumerate(stage_dilations(config)):
            planes = config.base_width * 2**stage
            stride = strides[stage]
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            blocks: list[nn.Module] = [block(inplanes, planes, stride, dilations[0], downsample)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, d) for d in dilations[1:]]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = inplanes

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)
