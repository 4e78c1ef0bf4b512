"""Adapter for the official DANet / PyTorch-Encoding checkpoints.

Layout (``encoding/models/sseg/danet.py``, ``encoding/models/backbone/resnet.py``):
``pretrained.conv1`` (7x7 conv, or the deep stem ``conv1.{0,1,3,4,6}``: 3x3 convs giving
stem_width, stem_width, 2*stem_width channels with the last BN at ``pretrained.bn1``),
``pretrained.layer1..4`` (conv1/bn1/conv2/bn2/conv3/bn3/downsample.{0,1}), and the head
``head.conv5a/conv5c`` (3x3 conv-BN-ReLU to in/4 channels), ``head.sa`` (PAM: ``query_conv``,
``key_conv``, ``value_conv``, ``gamma``), ``head.sc.gamma`` (CAM), ``head.conv51/conv52`` and the
classifiers ``head.conv6/7/8`` (Dropout2d then 1x1 conv, hence ``.1.``). Final upsampling uses
``align_corners=True``. The 2018-2019 DANet code (``encoding/dilated/resnet.py``, which produced the
released DANet-101 Cityscapes weights) kept the unused ImageNet classifier ``pretrained.fc.*`` in
the backbone; it plays no part in segmentation and is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.checkpoints._common import StateDict, infer_depth, require
from models.config import DANetConfig

FORMAT = "official"
_BACKBONE = "pretrained."
_IGNORED_PREFIXES = ("pretrained.fc.",)

_HEAD_MAP = {
    "head.conv5a.": "head.pam_in.",
    "head.conv5c.": "head.cam_in.",
    "head.sa.query_conv.": "head.pam.query.",
    "head.sa.key_conv.": "head.pam.key.",
    "head.sa.value_conv.": "head.pam.value.",
    "head.conv51.": "head.pam_out.",
    "head.conv52.": "head.cam_out.",
    "head.conv6.1.": "head.cls_pam.",
    "head.conv7.1.": "head.cls_cam.",
    "head.conv8.1.": "head.cls_fused.",
}
_HEAD_EXACT = {"head.sa.gamma": "head.pam.gamma", "head.sc.gamma": "head.cam.gamma"}
_DEEP_STEM = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.", "conv1.4.": "stem.4."}


def matches(state: Mapping[str, Any]) -> bool:
    """Whether the keys look like an official DANet state dict."""
    return any(key.startswith(_BACKBONE) for key in state) and any(
        key.startswith("head.conv5a.") or key.startswith("head.sa.") for key in state
    )


def infer_config(path: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture fields read from the tensors."""
    deep_stem = "pretrained.conv1.0.weight" in state
    stem_key = "pretrained.conv1.0.weight" if deep_stem else "pretrained.conv1.weight"
    require(
        path,
        FORMAT,
        state,
        [
            stem_key,
            "pretrained.layer1.0.conv1.weight",
            "head.conv5a.0.weight",
            "head.sa.query_conv.weight",
            "head.conv8.1.weight",
        ],
    )
    return {
        "depth": infer_depth(path, FORMAT, state, _BACKBONE),
        "deep_stem": deep_stem,
        "stem_width": int(state[stem_key].shape[0]),
        "base_width": int(state["pretrained.layer1.0.conv1.weight"].shape[0]),
        "num_classes": int(state["head.conv8.1.weight"].shape[0]),
        "head_channels": int(state["head.conv5a.0.weight"].shape[0]),
        "pam_channels": int(state["head.sa.query_conv.weight"].shape[0]),
        "align_corners": True,
    }


def _map_key(key: str, deep_stem: bool) -> str | None:
    if key in _HEAD_EXACT:
        return _HEAD_EXACT[key]
    for old, new in _HEAD_MAP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if not key.startswith(_BACKBONE):
        return None
    rest = key[len(_BACKBONE) :]
    if rest.startswith("layer"):
        return "backbone." + rest
    if deep_stem:
        for old, new in _DEEP_STEM.items():
            if rest.startswith(old):
                return "backbone." + new + rest[len(old) :]
        if rest.startswith("conv1.6."):
            return "backbone.stem.6." + rest[len("conv1.6.") :]
        if rest.startswith("bn1."):
            return "backbone.stem.7." + rest[len("bn1.") :]
    else:
        if rest.startswith("conv1."):
            return "backbone.stem.0." + rest[len("conv1.") :]
        if rest.startswith("bn1."):
            return "backbone.stem.1." + rest[len("bn1.") :]
    return None


def source_name(native_key: str, config: DANetConfig) -> str:
    """The official name of one of this project's keys (for error messages)."""
    for old, new in _HEAD_EXACT.items():
        if native_key == new:
            return old
    for old, new in _HEAD_MAP.items():
        if native_key.startswith(new):
            return old + native_key[len(new) :]
    if native_key.startswith("backbone.layer"):
        return _BACKBONE + native_key[len("backbone.") :]
    stem = native_key[len("backbone.") :]
    if config.deep_stem:
        table = {**{new: old for old, new in _DEEP_STEM.items()}, "stem.6.": "conv1.6.", "stem.7.": "bn1."}
    else:
        table = {"stem.0.": "conv1.", "stem.1.": "bn1."}
    for new, old in table.items():
        if stem.startswith(new):
            return _BACKBONE + old + stem[len(new) :]
    return native_key


def to_native(state: Mapping[str, Any], config: DANetConfig) -> tuple[StateDict, list[str]]:
    """Official keys -> this project's keys; returns the mapped tensors and the unmappable keys."""
    mapped: StateDict = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key.startswith(_IGNORED_PREFIXES):
            continue
        new = _map_key(key, config.deep_stem)
        if new is None:
            unexpected.append(key)
        else:
            mapped[new] = value
    return mapped, unexpected
