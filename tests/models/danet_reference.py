"""Independent, deliberately plain re-implementations of the two upstream DANet forward passes.

Nothing here imports from ``models``: the networks are evaluated straight from the upstream state
dicts with torch.nn.functional, following the upstream code paths literally (official
``ResNet._make_layer`` dilation rules, MMSegmentation's ``ResLayer`` with ``contract_dilation``,
the official ``PAM_Module``/``CAM_Module`` bmm formulation, mmseg's ``SelfAttentionBlock``). The
random state-dict generators also enumerate the upstream key names from the upstream layouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LAYOUTS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


# --------------------------------------------------------------------------- random weights
class _Gen:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, Tensor] = {}

    def conv(self, key: str, out_c: int, in_c: int, k: int, bias: bool = False, gain: float = 1.0) -> None:
        std = gain * (2.0 / (in_c * k * k)) ** 0.5
        self.sd[key + ".weight"] = torch.randn(out_c, in_c, k, k, generator=self.g) * std
        if bias:
            self.sd[key + ".bias"] = torch.randn(out_c, generator=self.g) * 0.1

    def bn(self, key: str, c: int, scale: tuple[float, float] = (0.5, 1.2)) -> None:
        lo, hi = scale
        self.sd[key + ".weight"] = lo + (hi - lo) * torch.rand(c, generator=self.g)
        self.sd[key + ".bias"] = torch.randn(c, generator=self.g) * 0.1
        self.sd[key + ".running_mean"] = torch.randn(c, generator=self.g) * 0.2
        self.sd[key + ".running_var"] = 0.5 + torch.rand(c, generator=self.g)
        self.sd[key + ".num_batches_tracked"] = torch.tensor(123)


def _resnet_layers(gen: _Gen, prefix: str, depth: int, inplanes: int, base: int) -> int:
    kind, blocks = LAYOUTS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    for stage, n in enumerate(blocks):
        planes = base * 2**stage
        for i in range(n):
            p = f"{prefix}layer{stage + 1}.{i}."
            if kind == "bottleneck":
                gen.conv(p + "conv1", planes, inplanes, 1)
                gen.bn(p + "bn1", planes)
                gen.conv(p + "conv2", planes, planes, 3)
                gen.bn(p + "bn2", planes)
                gen.conv(p + "conv3", planes * 4, planes, 1)
                gen.bn(p + "bn3", planes * 4, scale=(0.1, 0.3))  # keeps deep residual sums tame
            else:
                gen.conv(p + "conv1", planes, inplanes, 3)
                gen.bn(p + "bn1", planes)
                gen.conv(p + "conv2", planes, planes, 3)
                gen.bn(p + "bn2", planes, scale=(0.1, 0.3))
            if i == 0 and (stage > 0 or inplanes != planes * expansion):
                gen.conv(p + "downsample.0", planes * expansion, inplanes, 1)
                gen.bn(p + "downsample.1", planes * expansion)
            inplanes = planes * expansion
    return inplanes


def official_state_dict(
    depth: int, deep_stem: bool, num_classes: int, *, stem_width: int = 64, base: int = 64, seed: int = 0
) -> dict[str, Tensor]:
    """A random state dict with the official DANet key names (``DANet(...).state_dict()``)."""
    gen = _Gen(seed)
    if deep_stem:
        gen.conv("pretrained.conv1.0", stem_width, 3, 3)
        gen.bn("pretrained.conv1.1", stem_width)
        gen.conv("pretrained.conv1.3", stem_width, stem_width, 3)
        gen.bn("pretrained.conv1.4", stem_width)
        gen.conv("pretrained.conv1.6", stem_width * 2, stem_width, 3)
        gen.bn("pretrained.bn1", stem_width * 2)
        inplanes = stem_width * 2
    else:
        gen.conv("pretrained.conv1", 64, 3, 7)
        gen.bn("pretrained.bn1", 64)
        inplanes = 64
    in_ch = _resnet_layers(gen, "pretrained.", depth, inplanes, base)
    inter = in_ch // 4
    for name in ("conv5a", "conv5c"):
        gen.conv(f"head.{name}.0", inter, in_ch, 3)
        gen.bn(f"head.{name}.1", inter)
    for name in ("conv51", "conv52"):
        gen.conv(f"head.{name}.0", inter, inter, 3)
        gen.bn(f"head.{name}.1", inter)
    gen.conv("head.sa.query_conv", inter // 8, inter, 1, bias=True, gain=0.5)
    gen.conv("head.sa.key_conv", inter // 8, inter, 1, bias=True, gain=0.5)
    gen.conv("head.sa.value_conv", inter, inter, 1, bias=True)
    gen.sd["head.sa.gamma"] = torch.tensor([0.7])
    gen.sd["head.sc.gamma"] = torch.tensor([0.4])
    for name in ("conv6", "conv7", "conv8"):
        gen.conv(f"head.{name}.1", num_classes, inter, 1, bias=True)
    return gen.sd


def mmseg_state_dict(
    depth: int,
    deep_stem: bool,
    num_classes: int,
    *,
    stem_channels: int = 64,
    base: int = 64,
    channels: int | None = None,
    pam_channels: int | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A random state dict with MMSegmentation's key names (EncoderDecoder/ResNet(V1c)/DAHead + FCN aux)."""
    gen = _Gen(seed)
    if deep_stem:
        half = stem_channels // 2
        gen.conv("backbone.stem.0", half, 3, 3)
        gen.bn("backbone.stem.1", half)
        gen.conv("backbone.stem.3", half, half, 3)
        gen.bn("backbone.stem.4", half)
        gen.conv("backbone.stem.6", stem_channels, half, 3)
        gen.bn("backbone.stem.7", stem_channels)
    else:
        gen.conv("backbone.conv1", stem_channels, 3, 7)
        gen.bn("backbone.bn1", stem_channels)
    in_ch = _resnet_layers(gen, "backbone.", depth, stem_channels, base)
    channels = channels or in_ch // 4
    pam_channels = pam_channels or channels // 8
    for name in ("pam_in_conv", "cam_in_conv"):
        gen.conv(f"decode_head.{name}.conv", channels, in_ch, 3)
        gen.bn(f"decode_head.{name}.bn", channels)
    for name in ("pam_out_conv", "cam_out_conv"):
        gen.conv(f"decode_head.{name}.conv", channels, channels, 3)
        gen.bn(f"decode_head.{name}.bn", channels)
    gen.conv("decode_head.pam.query_project", pam_channels, channels, 1, bias=True, gain=0.5)
    gen.conv("decode_head.pam.key_project", pam_channels, channels, 1, bias=True, gain=0.5)
    gen.conv("decode_head.pam.value_project", channels, channels, 1, bias=True)
    gen.sd["decode_head.pam.gamma.scale"] = torch.tensor(0.6)  # mmcv Scale: a 0-d parameter
    gen.sd["decode_head.cam.gamma.scale"] = torch.tensor(0.3)
    for name in ("conv_seg", "pam_conv_seg", "cam_conv_seg"):
        gen.conv(f"decode_head.{name}", num_classes, channels, 1, bias=True)
    # The FCN auxiliary head on layer3 (training only).
    gen.conv("auxiliary_head.convs.0.conv", 16, in_ch // 2, 3)
    gen.bn("auxiliary_head.convs.0.bn", 16)
    gen.conv("auxiliary_head.conv_seg", num_classes, 16, 1, bias=True)
    return gen.sd


# --------------------------------------------------------------------------- functional pieces
#: While non-empty, every BN sets its running statistics from its input first (see :func:`calibrate`).
_CALIBRATING: list[bool] = []


def _bn(x: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    if _CALIBRATING:
        sd[key + ".running_mean"] = x.mean(dim=(0, 2, 3)).detach().clone()
        sd[key + ".running_var"] = x.var(dim=(0, 2, 3), unbiased=False).detach().clone()
    return F.batch_norm(
        x, sd[key + ".running_mean"], sd[key + ".running_var"], sd[key + ".weight"], sd[key + ".bias"],
        training=False, momentum=0.0, eps=1e-5,
    )  # fmt: skip


def _conv(
    x: Tensor, sd: dict[str, Tensor], key: str, stride: int = 1, padding: int = 0, dilation: int = 1
) -> Tensor:
    return F.conv2d(x, sd[key + ".weight"], sd.get(key + ".bias"), stride, padding, dilation)


def _bottleneck(x: Tensor, sd: dict[str, Tensor], p: str, stride: int, dilation: int) -> Tensor:
    out = F.relu(_bn(_conv(x, sd, p + "conv1"), sd, p + "bn1"))
    out = F.relu(_bn(_conv(out, sd, p + "conv2", stride, dilation, dilation), sd, p + "bn2"))
    out = _bn(_conv(out, sd, p + "conv3"), sd, p + "bn3")
    residual = x
    if p + "downsample.0.weight" in sd:
        residual = _bn(_conv(x, sd, p + "downsample.0", stride), sd, p + "downsample.1")
    return F.relu(out + residual)


def _mmseg_basic(x: Tensor, sd: dict[str, Tensor], p: str, stride: int, dilation: int) -> Tensor:
    out = F.relu(_bn(_conv(x, sd, p + "conv1", stride, dilation, dilation), sd, p + "bn1"))
    out = _bn(_conv(out, sd, p + "conv2", 1, 1), sd, p + "bn2")  # mmseg: conv2 is not dilated
    residual = x
    if p + "downsample.0.weight" in sd:
        residual = _bn(_conv(x, sd, p + "downsample.0", stride), sd, p + "downsample.1")
    return F.relu(out + residual)


def _num_blocks(sd: dict[str, Tensor], prefix: str, stage: int) -> int:
    n = 0
    while f"{prefix}layer{stage}.{n}.conv1.weight" in sd:
        n += 1
    return n


# --------------------------------------------------------------------------- official forward
def official_forward(
    sd: dict[str, Tensor], x: Tensor, *, os: int = 8, multi_dilation: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The official ``DANet.forward`` (PyTorch-Encoding ResNet + DANetHead), align_corners=True."""
    size = x.shape[2:]
    P = "pretrained."
    if P + "conv1.0.weight" in sd:  # deep stem
        x = F.relu(_bn(_conv(x, sd, P + "conv1.0", 2, 1), sd, P + "conv1.1"))
        x = F.relu(_bn(_conv(x, sd, P + "conv1.3", 1, 1), sd, P + "conv1.4"))
        x = _conv(x, sd, P + "conv1.6", 1, 1)
    else:
        x = _conv(x, sd, P + "conv1", 2, 3)
    x = F.relu(_bn(x, sd, P + "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)

    def make_layer(x: Tensor, stage: int, stride: int, dilation: int, multi: list[int] | None) -> Tensor:
        # encoding/models/backbone/resnet.py ResNet._make_layer, literally.
        for i in range(_num_blocks(sd, P, stage)):
            if multi is not None:
                d = multi[0] if i == 0 else multi[i % len(multi)]
            elif i == 0:
                d = 1 if dilation in (1, 2) else 2
            else:
                d = dilation
            x = _bottleneck(x, sd, f"{P}layer{stage}.{i}.", stride if i == 0 else 1, d)
        return x

    x = make_layer(x, 1, 1, 1, None)
    x = make_layer(x, 2, 2, 1, None)
    if os == 8:
        x = make_layer(x, 3, 1, 2, None)
        x = make_layer(x, 4, 1, 4, multi_dilation)
    else:
        assert multi_dilation is None, "the official code allows multi-grid at OS8 only"
        x = make_layer(x, 3, 2, 1, None)
        x = make_layer(x, 4, 1, 2, None)

    def cbr(t: Tensor, key: str) -> Tensor:
        return F.relu(_bn(_conv(t, sd, key + ".0", 1, 1), sd, key + ".1"))

    # PAM_Module
    feat1 = cbr(x, "head.conv5a")
    b, c, h, w = feat1.size()
    proj_query = _conv(feat1, sd, "head.sa.query_conv").view(b, -1, w * h).permute(0, 2, 1)
    proj_key = _conv(feat1, sd, "head.sa.key_conv").view(b, -1, w * h)
    attention = torch.softmax(torch.bmm(proj_query, proj_key), dim=-1)
    proj_value = _conv(feat1, sd, "head.sa.value_conv").view(b, -1, w * h)
    out = torch.bmm(proj_value, attention.permute(0, 2, 1)).view(b, c, h, w)
    sa_feat = sd["head.sa.gamma"] * out + feat1
    sa_conv = cbr(sa_feat, "head.conv51")
    sa_output = _conv(sa_conv, sd, "head.conv6.1")
    # CAM_Module
    feat2 = cbr(x, "head.conv5c")
    q = feat2.view(b, c, -1)
    energy = torch.bmm(q, q.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    out = torch.bmm(torch.softmax(energy_new, dim=-1), q).view(b, c, h, w)
    sc_feat = sd["head.sc.gamma"] * out + feat2
    sc_conv = cbr(sc_feat, "head.conv52")
    sc_output = _conv(sc_conv, sd, "head.conv7.1")
    sasc_output = _conv(sa_conv + sc_conv, sd, "head.conv8.1")

    def up(t: Tensor) -> Tensor:
        return F.interpolate(t, size, mode="bilinear", align_corners=True)

    return up(sasc_output), up(sa_output), up(sc_output)


# --------------------------------------------------------------------------- mmseg forward
def mmseg_forward(
    sd: dict[str, Tensor], x: Tensor, *, os: int = 8, multi_grid: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """MMSegmentation ``EncoderDecoder`` with ResNet(V1c, contract_dilation) + DAHead, align_corners=False."""
    size = x.shape[2:]
    B = "backbone."
    if B + "stem.0.weight" in sd:
        for conv, norm in (("stem.0", "stem.1"), ("stem.3", "stem.4"), ("stem.6", "stem.7")):
            x = F.relu(_bn(_conv(x, sd, B + conv, 2 if conv == "stem.0" else 1, 1), sd, B + norm))
    else:
        x = F.relu(_bn(_conv(x, sd, B + "conv1", 2, 3), sd, B + "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    strides, dilations = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2))}[os]
    basic = B + "layer1.0.conv3.weight" not in sd
    for stage in range(4):
        grid = multi_grid if stage == 3 else None
        dilation = dilations[stage]
        # mmseg/models/utils/res_layer.py ResLayer
        contracted = dilation // 2 if dilation > 1 else dilation
        first = contracted if grid is None else grid[0]
        for i in range(_num_blocks(sd, B, stage + 1)):
            d = first if i == 0 else (dilation if grid is None else grid[i])
            block = _mmseg_basic if basic else _bottleneck
            x = block(x, sd, f"{B}layer{stage + 1}.{i}.", strides[stage] if i == 0 else 1, d)

    H = "decode_head."

    def conv_module(t: Tensor, key: str) -> Tensor:
        return F.relu(_bn(_conv(t, sd, H + key + ".conv", 1, 1), sd, H + key + ".bn"))

    # PAM (SelfAttentionBlock, no norm in projections, no out projection)
    pam_feat = conv_module(x, "pam_in_conv")
    b = pam_feat.size(0)
    query = _conv(pam_feat, sd, H + "pam.query_project")
    query = query.reshape(*query.shape[:2], -1).permute(0, 2, 1).contiguous()
    key = _conv(pam_feat, sd, H + "pam.key_project")
    value = _conv(pam_feat, sd, H + "pam.value_project")
    key = key.reshape(*key.shape[:2], -1)
    value = value.reshape(*value.shape[:2], -1).permute(0, 2, 1).contiguous()
    sim_map = F.softmax(torch.matmul(query, key), dim=-1)
    context = torch.matmul(sim_map, value).permute(0, 2, 1).contiguous()
    context = context.reshape(b, -1, *pam_feat.shape[2:])
    pam_feat = sd[H + "pam.gamma.scale"] * context + pam_feat
    pam_feat = conv_module(pam_feat, "pam_out_conv")
    pam_out = _conv(pam_feat, sd, H + "pam_conv_seg")
    # CAM
    cam_feat = conv_module(x, "cam_in_conv")
    bs, c, h, w = cam_feat.size()
    proj = cam_feat.view(bs, c, -1)
    energy = torch.bmm(proj, proj.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    out = torch.bmm(F.softmax(energy_new, dim=-1), proj).view(bs, c, h, w)
    cam_feat = sd[H + "cam.gamma.scale"] * out + cam_feat
    cam_feat = conv_module(cam_feat, "cam_out_conv")
    cam_out = _conv(cam_feat, sd, H + "cam_conv_seg")
    fused = _conv(pam_feat + cam_feat, sd, H + "conv_seg")

    def up(t: Tensor) -> Tensor:
        return F.interpolate(t, size, mode="bilinear", align_corners=False)

    return up(fused), up(pam_out), up(cam_out)


# --------------------------------------------------------------------------- trained-scale weights
CLASSIFIERS = {
    "official": ("head.conv8.1", "head.conv6.1", "head.conv7.1"),
    "mmseg": ("decode_head.conv_seg", "decode_head.pam_conv_seg", "decode_head.cam_conv_seg"),
}


def calibrate(
    sd: dict[str, Tensor], x: Tensor, *, layout: str, logit_scale: float = 30.0, **forward_kwargs: object
) -> dict[str, Tensor]:
    """Random weights made to behave like a trained network's (what the export tests need).

    Every BN's running statistics are set from one float64 pass over the calibration batch ``x``
    (normalised images), in forward order, as BN training would leave them; then each classifier
    is scaled so that the largest |logit| on ``x`` is ``logit_scale`` (trained DANets: 20-40).
    Returns a new float32 state dict.
    """
    forward = {"official": official_forward, "mmseg": mmseg_forward}[layout]
    calibrated = {k: v.double() if v.is_floating_point() else v.clone() for k, v in sd.items()}
    _CALIBRATING.append(True)
    try:
        with torch.no_grad():
            forward(calibrated, x.double(), **forward_kwargs)  # type: ignore[arg-type]
    finally:
        _CALIBRATING.pop()
    with torch.no_grad():
        outputs = forward(calibrated, x.double(), **forward_kwargs)  # type: ignore[arg-type]
    for key, logits in zip(CLASSIFIERS[layout], outputs, strict=True):
        factor = logit_scale / logits.abs().max()
        calibrated[key + ".weight"] = calibrated[key + ".weight"] * factor
        calibrated[key + ".bias"] = calibrated[key + ".bias"] * factor
    return {k: v.float() if v.is_floating_point() else v for k, v in calibrated.items()}
