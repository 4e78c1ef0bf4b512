"""This project's own checkpoint format: one ``.safetensors`` file.

The tensors are the :class:`models.danet.DANet` state dict (this project's key names); the
safetensors ``__metadata__`` holds ``"danet_config"`` = JSON of :meth:`DANetConfig.to_dict`
(architecture, classes, palette, mean/std, ...) and ``"format"`` = ``"danet-serve"``.
safetensors never executes code on load.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from models.checkpoints._common import CheckpointError, StateDict
from models.config import DANetConfig
from models.danet import DANet

FORMAT = "danet-serve"
CONFIG_KEY = "danet_config"
FORMAT_VERSION = "1"


def looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by ``{``."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1


def save_native(model: DANet, config: DANetConfig, path: str | Path) -> Path:
    """Write ``model``'s weights and ``config`` to ``path`` (a ``.safetensors`` file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    metadata = {CONFIG_KEY: config.to_json(), "format": FORMAT, "format_version": FORMAT_VERSION}
    save_file(state, str(target), metadata=metadata)
    return target


def read_native(path: Path) -> tuple[StateDict, DANetConfig]:
    """Tensors and config of a native file; any problem becomes a :class:`CheckpointError`."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        header_len = struct.unpack("<Q", handle.read(8))[0]
    if header_len + 8 > size:
        raise CheckpointError(
            path,
            FORMAT,
            f"the file is truncated: its header alone needs {header_len + 8} bytes, it has {size}",
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata: dict[str, Any] = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, FORMAT, f"the file is truncated or corrupted ({exc})") from None
    if CONFIG_KEY not in metadata:
        raise CheckpointError(
            path,
            FORMAT,
            f"this safetensors file has no '{CONFIG_KEY}' metadata, so the architecture is unknown; "
            "write it with models.checkpoints.native.save_native",
        )
    try:
        config = DANetConfig.from_json(metadata[CONFIG_KEY])
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, FORMAT, f"invalid '{CONFIG_KEY}' metadata ({exc})") from None
    return {
        key: value.to(torch.float32) if value.is_floating_point() else value for key, value in state.items()
    }, config
