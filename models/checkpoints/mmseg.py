"""Adapter for MMSegmentation DANet checkpoints (``EncoderDecoder`` + ``ResNetV1c`` + ``DAHead``).

Layout (``mmseg/models/backbones/resnet.py``, ``mmseg/models/decode_heads/da_head.py``):
``backbone.stem.{0,1,3,4,6,7}`` (deep stem: 3x3 convs giving stem_channels/2, stem_channels/2,
stem_channels) or ``backbone.conv1``/``backbone.bn1``; ``backbone.layer1..4``; the head
``decode_head.{pam,cam}_{in,out}_conv.{conv,bn}`` (ConvModule), ``decode_head.pam.{query,key,value}_project``
(plain 1x1 convs: ``key_query_norm=False``, one conv each, no out projection),
``decode_head.{pam,cam}.gamma.scale`` (mmcv ``Scale``, a 0-d tensor), and the classifiers
``decode_head.conv_seg`` (fused), ``pam_conv_seg``, ``cam_conv_seg``. ``auxiliary_head.*`` (FCN head
on layer3, training only) is ignored. Final upsampling uses ``align_corners=False``.
Class names/palette come from ``meta["CLASSES"]``/``meta["PALETTE"]`` (mmseg 0.x) or
``meta["dataset_meta"]`` (mmseg 1.x) when present.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.checkpoints._common import StateDict, infer_depth, require
from models.config import DANetConfig

FORMAT = "mmseg"
_BACKBONE = "backbone."
_IGNORED_PREFIXES = ("auxiliary_head.",)

_HEAD_MAP = {
    "decode_head.pam_in_conv.conv.": "head.pam_in.0.",
    "decode_head.pam_in_conv.bn.": "head.pam_in.1.",
    "decode_head.pam_out_conv.conv.": "head.pam_out.0.",
    "decode_head.pam_out_conv.bn.": "head.pam_out.1.",
    "decode_head.cam_in_conv.conv.": "head.cam_in.0.",
    "decode_head.cam_in_conv.bn.": "head.cam_in.1.",
    "decode_head.cam_out_conv.conv.": "head.cam_out.0.",
    "decode_head.cam_out_conv.bn.": "head.cam_out.1.",
    "decode_head.pam.query_project.": "head.pam.query.",
    "decode_head.pam.key_project.": "head.pam.key.",
    "decode_head.pam.value_project.": "head.pam.value.",
    "decode_head.conv_seg.": "head.cls_fused.",
    "decode_head.pam_conv_seg.": "head.cls_pam.",
    "decode_head.cam_conv_seg.": "head.cls_cam.",
}
_SCALES = {"decode_head.pam.gamma.scale": "head.pam.gamma", "decode_head.cam.gamma.scale": "head.cam.gamma"}


def matches(state: Mapping[str, Any]) -> bool:
    """Whether the keys look like an MMSegmentation DANet state dict."""
    return any(key.startswith(_BACKBONE) for key in state) and any(
        key.startswith("decode_head.pam") or key.startswith("decode_head.cam") for key in state
    )


def infer_config(path: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture fields read from the tensors."""
    deep_stem = "backbone.stem.0.weight" in state
    stem_key = "backbone.stem.0.weight" if deep_stem else "backbone.conv1.weight"
    require(
        path,
        FORMAT,
        state,
        [
            stem_key,
            "backbone.layer1.0.conv1.weight",
            "decode_head.pam_in_conv.conv.weight",
            "decode_head.pam.query_project.weight",
            "decode_head.conv_seg.weight",
        ],
    )
    return {
        "depth": infer_depth(path, FORMAT, state, _BACKBONE),
        "deep_stem": deep_stem,
        "stem_width": int(state[stem_key].shape[0]),
        "base_width": int(state["backbone.layer1.0.conv1.weight"].shape[0]),
        "num_classes": int(state["decode_head.conv_seg.weight"].shape[0]),
        "head_channels": int(state["decode_head.pam_in_conv.conv.weight"].shape[0]),
        "pam_channels": int(state["decode_head.pam.query_project.weight"].shape[0]),
        "align_corners": False,
    }


def embedded_labels(meta: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    """Class names and palette stored in the checkpoint's ``meta``, if any."""
    if not isinstance(meta, Mapping):
        return None, None
    dataset_meta = meta.get("dataset_meta")
    source = dataset_meta if isinstance(dataset_meta, Mapping) else meta
    classes = source.get("classes", source.get("CLASSES"))
    palette = source.get("palette", source.get("PALETTE"))
    names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    colours = [list(c) for c in palette] if isinstance(palette, (list, tuple)) else None
    return names, colours


def _map_key(key: str, deep_stem: bool) -> str | None:
    if key in _SCALES:
        return _SCALES[key]
    for old, new in _HEAD_MAP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if not key.startswith(_BACKBONE):
        return None
    rest = key[len(_BACKBONE) :]
    if rest.startswith("layer") or (deep_stem and rest.startswith("stem.")):
        return "backbone." + rest
    if not deep_stem and rest.startswith("conv1."):
        return "backbone.stem.0." + rest[len("conv1.") :]
    if not deep_stem and rest.startswith("bn1."):
        return "backbone.stem.1." + rest[len("bn1.") :]
    return None


def source_name(native_key: str, config: DANetConfig) -> str:
    """The MMSegmentation name of one of this project's keys (for error messages)."""
    for old, new in _SCALES.items():
        if native_key == new:
            return old
    for old, new in _HEAD_MAP.items():
        if native_key.startswith(new):
            return old + native_key[len(new) :]
    if not config.deep_stem:
        for new, old in (("backbone.stem.0.", "backbone.conv1."), ("backbone.stem.1.", "backbone.bn1.")):
            if native_key.startswith(new):
                return old + native_key[len(new) :]
    return native_key


def to_native(state: Mapping[str, Any], config: DANetConfig) -> tuple[StateDict, list[str]]:
    """MMSegmentation keys -> this project's keys; returns the mapped tensors and the unmappable keys."""
    mapped: StateDict = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key.startswith(_IGNORED_PREFIXES):
            continue
        new = _map_key(key, config.deep_stem)
        if new is None:
            unexpected.append(key)
        elif key in _SCALES and value.numel() == 1:
            mapped[new] = value.reshape(1)  # mmcv Scale is 0-d; our gamma has shape [1]
        else:
            mapped[new] = value
    return mapped, unexpected
