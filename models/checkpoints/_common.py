"""Shared pieces of the checkpoint adapters: the error type, reading files safely, inferring the
backbone layout from tensors, strict assignment of weights, and class names."""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.config import RESNET_LAYOUTS, DANetConfig
from models.danet import DANet
from models.labels import LabelSet, generate_palette, get_label_set, load_label_set

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

#: Label sets guessed from the number of classes when a checkpoint carries no names.
_LABEL_SETS_BY_SIZE = {19: "cityscapes", 150: "ade20k", 21: "voc", 59: "pascal_context", 171: "coco_stuff"}

_MAX_LISTED_KEYS = 5


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one paragraph meant for the user."""

    def __init__(self, path: str | Path, fmt: str, problem: str) -> None:
        self.path = str(path)
        self.format = fmt
        self.problem = problem
        super().__init__(f"Cannot load checkpoint {self.path} (detected format: {fmt}): {problem}")


@dataclass
class LoadedCheckpoint:
    """A DANet in eval mode with its configuration and provenance."""

    model: DANet
    config: DANetConfig
    source_format: str  # "official" | "mmseg" | "danet-serve"
    sha256: str
    path: Path


def describe_keys(keys: Iterable[str]) -> str:
    """``"N: a, b, c, ... and M more"`` for error messages."""
    ordered = sorted(keys)
    shown = ", ".join(ordered[:_MAX_LISTED_KEYS])
    rest = len(ordered) - _MAX_LISTED_KEYS
    return f"{len(ordered)}: {shown}" + (f", ... and {rest} more" if rest > 0 else "")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_load_safely(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a :class:`CheckpointError`."""
    with path.open("rb") as handle:
        head = handle.read(4)
    is_zip = head.startswith(b"PK")
    is_pickle = head[:1] == b"\x80"
    if not (is_zip or is_pickle):
        raise CheckpointError(
            path,
            "unknown",
            "the file is not a PyTorch checkpoint (neither a zip archive nor a pickle stream)",
        )
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            path,
            "unknown",
            "the zip archive is truncated or corrupted (no central directory); re-download it",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text and "Unsupported global" not in text:
            raise CheckpointError(
                path, "unknown", f"the file is not a readable PyTorch checkpoint ({text})"
            ) from None
        return _load_with_inert_bookkeeping(path, text)
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _truncated(path, exc) from None


#: Training bookkeeping that MMSegmentation 1.x / MMEngine store next to the weights (message hub
#: history buffers, numpy scalars and arrays). Such objects are replaced by an inert placeholder.
_BOOKKEEPING_PREFIXES = ("numpy.", "mmengine.", "mmcv.", "mmseg.")


class _Inert:
    """Stands in for a bookkeeping object: accepts any constructor/state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _truncated(path: Path, exc: BaseException) -> CheckpointError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CheckpointError(
        path, "unknown", f"the file is truncated or corrupted ({type(exc).__name__}: {reason})"
    )


def _load_with_inert_bookkeeping(path: Path, refusal: str) -> Any:
    """Second attempt after ``weights_only`` refused some globals.

    Only when every refused global is known training bookkeeping is the file read again, with
    each such global bound to :class:`_Inert` (so nothing from the file is ever called). Anything
    else (``os.system``, ``builtins.eval``, arbitrary classes) is refused with its name.
    """
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - any failure here means we cannot vouch for the file
        names = []
    dangerous = [name for name in names if not name.startswith(_BOOKKEEPING_PREFIXES)]
    if not names or dangerous:
        match = re.search(r"GLOBAL\s+([\w.]+)", refusal)
        what = ", ".join(dangerous[:3]) if dangerous else (match.group(1) if match else "a Python object")
        raise CheckpointError(
            path,
            "unknown",
            f"refused to unpickle {what}: the file holds Python objects other than tensors and plain "
            "containers, and loading them could execute code; re-save only the state_dict "
            "(torch.save(model.state_dict(), ...))",
        )
    logger.info("%s: ignoring non-tensor bookkeeping objects %s", path, ", ".join(names))
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            path, "unknown", f"refused to unpickle the file ({str(exc).splitlines()[0]})"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _truncated(path, exc) from None


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> StateDict:
    """Drop ``prefix`` (e.g. ``module.`` from DataParallel) when every key has it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def block_counts(state: Mapping[str, Tensor], prefix: str) -> tuple[int, int, int, int]:
    """Number of residual blocks in ``{prefix}layer1..4`` found in the keys."""
    counts = []
    for stage in range(1, 5):
        pattern = re.compile(rf"^{re.escape(prefix)}layer{stage}\.(\d+)\.")
        indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
        counts.append(max(indices) + 1 if indices else 0)
    return counts[0], counts[1], counts[2], counts[3]


def infer_depth(path: Path, fmt: str, state: Mapping[str, Tensor], prefix: str) -> int:
    """ResNet depth from the block layout and block type found under ``prefix``."""
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    blocks = block_counts(state, prefix)
    for depth, (is_bottleneck, layout) in RESNET_LAYOUTS.items():
        if is_bottleneck == bottleneck and layout == blocks:
            return depth
    kind = "bottleneck" if bottleneck else "basic"
    raise CheckpointError(
        path,
        fmt,
        f"the backbone has {kind} blocks laid out as {list(blocks)} per stage, which matches no ResNet "
        f"depth in {sorted(RESNET_LAYOUTS)}",
    )


def require(path: Path, fmt: str, state: Mapping[str, Tensor], keys: Sequence[str]) -> None:
    """Fail early, naming the keys, when tensors needed to infer the architecture are absent."""
    absent = [key for key in keys if key not in state]
    if absent:
        raise CheckpointError(path, fmt, f"missing keys ({describe_keys(absent)})")


def resolve_labels(
    classes: str | Path | LabelSet | Sequence[str] | None,
    num_classes: int,
    embedded_classes: Sequence[str] | None = None,
    embedded_palette: Sequence[Sequence[int]] | None = None,
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette: the ``classes`` argument, else the checkpoint's own, else a known
    label set of that size, else ``class_0..`` with a generated palette."""
    labels: LabelSet | None = None
    if isinstance(classes, LabelSet):
        labels = classes
    elif isinstance(classes, (str, Path)):
        labels = load_label_set(classes)
    elif classes is not None:
        names = [str(c) for c in classes]
        labels = LabelSet("custom", names, generate_palette(len(names)))
    elif embedded_classes and len(embedded_classes) == num_classes:
        names = [str(c) for c in embedded_classes]
        palette = (
            [(int(c[0]), int(c[1]), int(c[2])) for c in embedded_palette]
            if embedded_palette and len(embedded_palette) == len(names)
            else generate_palette(len(names))
        )
        labels = LabelSet("checkpoint", names, palette)
    elif num_classes in _LABEL_SETS_BY_SIZE:
        labels = get_label_set(_LABEL_SETS_BY_SIZE[num_classes])
    if labels is None:
        return tuple(f"class_{i}" for i in range(num_classes)), tuple(generate_palette(num_classes))
    if len(labels.classes) != num_classes:
        raise ValueError(
            f"the label set {labels.name!r} has {len(labels.classes)} classes but the checkpoint "
            f"predicts {num_classes}"
        )
    return tuple(labels.classes), tuple(labels.palette)


def assign_strict(
    path: Path,
    fmt: str,
    model: DANet,
    mapped: StateDict,
    unexpected: Iterable[str],
    source_name: Callable[[str], str] = str,
) -> None:
    """Load ``mapped`` (native key names) into ``model``, refusing any missing/unexpected key or shape
    mismatch; keys are reported under their names in the source format (``source_name``).
    BatchNorm ``num_batches_tracked`` counters are optional (old checkpoints lack them)."""
    target = model.state_dict()
    unexpected_keys = set(unexpected) | {source_name(key) for key in mapped if key not in target}
    missing = {
        source_name(key) for key in target if key not in mapped and not key.endswith("num_batches_tracked")
    }
    problems = []
    if missing:
        problems.append(f"missing keys ({describe_keys(missing)})")
    if unexpected_keys:
        problems.append(f"unexpected keys ({describe_keys(unexpected_keys)})")
    mismatched = [
        f"{source_name(key)} {list(value.shape)} vs expected {list(target[key].shape)}"
        for key, value in mapped.items()
        if key in target and value.shape != target[key].shape
    ]
    if mismatched:
        shown = "; ".join(sorted(mismatched)[:_MAX_LISTED_KEYS])
        more = len(mismatched) - _MAX_LISTED_KEYS
        problems.append(
            f"shape mismatches ({len(mismatched)}: {shown}" + (f"; ... and {more} more)" if more > 0 else ")")
        )
    if problems:
        raise CheckpointError(path, fmt, "; ".join(problems))
    full = {key: mapped.get(key, value) for key, value in target.items()}
    model.load_state_dict({key: value.to(target[key].dtype) for key, value in full.items()}, strict=True)
