"""Checkpoint import: official DANet, MMSegmentation and this project's own format, auto-detected.

``load_checkpoint(path)`` reads a file, detects its format, infers the architecture from the
tensors (depth, stem, widths, number of classes), maps the keys, refuses anything that does not
fit exactly, and returns the model in eval mode with its :class:`DANetConfig`:

* ``official`` (``.pth`` / ``.pth.tar``; weights at the top level or under ``state_dict``, possibly
  with DataParallel's ``module.`` prefix): see :mod:`models.checkpoints.official`;
* ``mmseg`` (``meta`` + ``state_dict``): see :mod:`models.checkpoints.mmseg`;
* ``danet-serve`` (``.safetensors`` with the config in its metadata): see :mod:`models.checkpoints.native`.

Pickle-based files are read with ``torch.load(weights_only=True)`` only, so loading never runs
code. Every failure is a :class:`CheckpointError` whose message is one paragraph naming the file,
the detected format and the offending keys.

The output stride and multi-grid dilations do not change any tensor shape, so they cannot be read
from a checkpoint: they come from the arguments (defaults: output stride 8, no multi-grid; the
official Cityscapes ResNet-101 model wants ``multi_grid=(4, 8, 16)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.checkpoints import mmseg, native, official
from models.checkpoints._common import (
    CheckpointError,
    LoadedCheckpoint,
    StateDict,
    assign_strict,
    resolve_labels,
    sha256_of,
    strip_prefix,
    torch_load_safely,
)
from models.config import DANetConfig
from models.danet import DANet
from models.labels import LabelSet

__all__ = [
    "FORMATS",
    "CheckpointError",
    "LoadedCheckpoint",
    "detect_format",
    "load_checkpoint",
    "save_native",
]

FORMATS = (official.FORMAT, mmseg.FORMAT, native.FORMAT)

ClassesArg = str | Path | LabelSet | Sequence[str] | None


def _is_tensor_mapping(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(path: Path, obj: Any) -> tuple[StateDict, Any]:
    """The state dict and the ``meta`` entry (if any) of a loaded pickle checkpoint."""
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            path, "unknown", f"the file holds a {type(obj).__name__}, not a state dict of tensors"
        )
    tensors = {str(k): v for k, v in obj.items() if _is_tensor_mapping({k: v})}
    if not tensors:
        raise CheckpointError(path, "unknown", "the file holds no tensors, so it is not a model checkpoint")
    return strip_prefix(tensors, "module."), meta


def detect_format(state: Mapping[str, Any]) -> str | None:
    """``"official"``, ``"mmseg"`` or None from the keys of a (prefix-stripped) state dict."""
    if official.matches(state):
        return official.FORMAT
    if mmseg.matches(state):
        return mmseg.FORMAT
    return None


def _apply_overrides(
    config_fields: dict[str, Any], output_stride: int | None, multi_grid: Sequence[int] | None
) -> dict[str, Any]:
    if output_stride is not None:
        config_fields["output_stride"] = int(output_stride)
    if multi_grid is not None:
        config_fields["multi_grid"] = tuple(int(d) for d in multi_grid) or None
    return config_fields


def _make_config(path: Path, fmt: str, config_fields: dict[str, Any]) -> DANetConfig:
    try:
        return DANetConfig(**config_fields)
    except ValueError as exc:
        raise CheckpointError(path, fmt, str(exc)) from None


def load_checkpoint(
    path: str | Path,
    *,
    output_stride: int | None = None,
    multi_grid: Sequence[int] | None = None,
    classes: ClassesArg = None,
) -> LoadedCheckpoint:
    """Load any supported DANet checkpoint; see the module docstring.

    ``output_stride`` (8 or 16) and ``multi_grid`` (layer4 dilations, e.g. ``(4, 8, 16)``) override
    the defaults (official/mmseg: 8 and none; native: what the file says). ``classes`` is a label-set
    name, a JSON/text file, a :class:`LabelSet` or a list of names; by default the checkpoint's own
    names are used, else a built-in set with the same number of classes, else ``class_i``.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(file, "unknown", "no such file")
    if file.stat().st_size == 0:
        raise CheckpointError(file, "unknown", "the file is empty")
    digest = sha256_of(file)

    if native.looks_like_safetensors(file):
        fmt = native.FORMAT
        state, stored = native.read_native(file)
        config_fields = _apply_overrides(stored.to_dict(), output_stride, multi_grid)
        if classes is not None:
            names, palette = _labels(file, fmt, classes, stored.num_classes)
            config_fields.update(classes=names, palette=palette)
        config = _make_config(file, fmt, config_fields)
        mapped, unexpected = state, []

        def source_name(key: str) -> str:
            return key
    else:
        obj = torch_load_safely(file)
        state, meta = _unwrap(file, obj)
        detected = detect_format(state)
        if detected is None:
            shown = ", ".join(sorted(state)[:5])
            raise CheckpointError(
                file,
                "unknown",
                f"the keys match neither the official DANet layout (pretrained.*, head.conv5a.*, head.sa.*) "
                f"nor MMSegmentation's (backbone.*, decode_head.pam*); {len(state)} keys, first: {shown}",
            )
        fmt = detected
        adapter = official if fmt == official.FORMAT else mmseg
        config_fields = _apply_overrides(adapter.infer_config(file, state), output_stride, multi_grid)
        embedded_names, embedded_palette = (
            mmseg.embedded_labels(meta) if fmt == mmseg.FORMAT else (None, None)
        )
        names, palette = _labels(
            file, fmt, classes, config_fields["num_classes"], embedded_names, embedded_palette
        )
        config_fields.update(classes=names, palette=palette, name=f"danet-{fmt}-r{config_fields['depth']}")
        config = _make_config(file, fmt, config_fields)
        mapped, unexpected = adapter.to_native(state, config)

        def source_name(key: str) -> str:
            return adapter.source_name(key, config)

    model = DANet(config)
    assign_strict(file, fmt, model, mapped, unexpected, source_name)
    model.eval()
    return LoadedCheckpoint(model=model, config=config, source_format=fmt, sha256=digest, path=file)


def _labels(
    file: Path,
    fmt: str,
    classes: ClassesArg,
    num_classes: int,
    embedded_names: Sequence[str] | None = None,
    embedded_palette: Sequence[Sequence[int]] | None = None,
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    try:
        return resolve_labels(classes, num_classes, embedded_names, embedded_palette)
    except ValueError as exc:
        raise CheckpointError(file, fmt, str(exc)) from None


save_native = native.save_native
