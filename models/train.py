"""``danet-train``: train a DANet on CPU, on procedural scenes (default) or on a folder of labelled images.

The default run trains the embedded model ``danet-synthetic``: a slim DANet (dilated ResNet-18 layout,
deep stem, base width 16, output stride 8) on 20,480 fresh :mod:`models.synthetic` scenes at 160x160
(16 epochs of 160 steps of 8; about 10-15 minutes on 2 CPU cores), then
measures mIoU and pixel accuracy on held-out scenes (a seed stream training never draws from) and
writes ``OUTPUT/NAME.safetensors`` (native format: the config carries classes, palette, mean/std and
the preferred size) plus ``OUTPUT/NAME.report.json``.

Loss: cross-entropy on the fused output plus ``--aux-weight`` times the cross-entropy of each of the
PAM-only and CAM-only outputs. The default weight 1.0 is what the official DANet code
(``SegmentationMultiLosses``: loss1 + loss2 + loss3) and MMSegmentation's DAHead use.
Optimiser: AdamW with linear warm-up and the "poly" decay (power 0.9) of the official recipe; the
learning rate is a pure function of the global step, so resuming needs no scheduler state.

Resumable: after every epoch the full training state goes to ``OUTPUT/NAME.last.pt`` (written
atomically); ``--resume`` continues from it. Batches depend only on ``(seed, epoch, step)``, so a
resumed run sees the data it would have seen. The state file is removed once the weights are written,
unless ``--keep-checkpoint``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn
except ModuleNotFoundError as _missing:  # the danet-train command in the runtime-only environment
    if _missing.name != "torch" or Path(sys.argv[0]).name != "danet-train":
        raise
    raise SystemExit(
        "danet-train needs PyTorch, which `make run` does not install: run `make tools`, "
        "then call .venv/bin/danet-train (or activate .venv first)"
    ) from None
from tqdm import tqdm

from common.contract import DEFAULT_MODEL_NAME
from models import synthetic
from models.config import DANetConfig
from models.danet import DANet, build_danet
from models.data import IGNORE_INDEX, BatchSource, DatasetError, FolderSource, SceneSource, scene_batch
from models.labels import available_label_sets

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on (``output`` and the flags below ``seed`` aside)."""

    output: Path
    name: str = DEFAULT_MODEL_NAME
    data: Path | None = None
    val_data: Path | None = None
    classes: str | None = None
    size: tuple[int, int] = (160, 160)
    epochs: int = 16
    epoch_size: int = 1280
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    aux_weight: float = 1.0
    depth: int = 18
    deep_stem: bool = True
    stem_width: int = 16
    base_width: int = 16
    head_channels: int | None = None
    output_stride: int = 8
    align_corners: bool = False
    seed: int = 0
    eval_count: int = 128
    monitor_count: int = 16
    # Flags that do not change the result:
    threads: int = 2
    resume: bool = False
    keep_checkpoint: bool = False
    progress: bool = True

    @property
    def steps_per_epoch(self) -> int:
        return max(self.epoch_size // self.batch_size, 1)

    @property
    def weights_path(self) -> Path:
        return self.output / f"{self.name}.safetensors"

    @property
    def report_path(self) -> Path:
        return self.output / f"{self.name}.report.json"

    @property
    def state_path(self) -> Path:
        return self.output / f"{self.name}.last.pt"

    def fingerprint(self) -> dict[str, Any]:
        """The options a resumed run must share with the run that wrote the state."""
        skip = {"output", "threads", "resume", "keep_checkpoint", "progress"}
        data = {k: v for k, v in asdict(self).items() if k not in skip}
        return json.loads(json.dumps(data, default=str))


# --- model and data set-up ----------------------------------------------------------------------------------


def resolve_classes(options: TrainOptions) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette: the synthetic ones, or ``--classes`` (a label-set name or file)."""
    if options.classes is None:
        if options.data is not None:
            raise DatasetError("--data needs --classes NAME|FILE (a label-set name or a JSON/text file)")
        return synthetic.CLASSES, synthetic.PALETTE
    from models.labels import load_label_set  # only needed for user data sets

    label_set = load_label_set(options.classes)
    return tuple(label_set.classes), tuple(tuple(c) for c in label_set.palette)  # type: ignore[misc]


def build_config(options: TrainOptions) -> DANetConfig:
    classes, palette = resolve_classes(options)
    return DANetConfig(
        name=options.name,
        depth=options.depth,
        deep_stem=options.deep_stem,
        stem_width=options.stem_width,
        base_width=options.base_width,
        head_channels=options.head_channels,
        output_stride=options.output_stride,
        num_classes=len(classes),
        align_corners=options.align_corners,
        classes=classes,
        palette=palette,
        preferred_size=options.size,
    )


def build_source(options: TrainOptions, num_classes: int) -> BatchSource:
    if options.data is None:
        return SceneSource(seed=options.seed, size=options.size, epoch_size=options.epoch_size)
    return FolderSource(options.data, size=options.size, num_classes=num_classes, seed=options.seed)


def to_input(images: np.ndarray, config: DANetConfig) -> Tensor:
    """uint8 [N, H, W, 3] RGB -> normalised float32 [N, 3, H, W], as the model expects."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (x - mean) / std


def segmentation_loss(
    outputs: tuple[Tensor, Tensor, Tensor], target: Tensor, aux_weight: float
) -> tuple[Tensor, Tensor]:
    """``(total, fused-only)`` cross-entropy; ``IGNORE_INDEX`` pixels do not count."""
    fused, pam, cam = outputs
    main = F.cross_entropy(fused, target, ignore_index=IGNORE_INDEX)
    total = main
    if aux_weight:
        total = total + aux_weight * (
            F.cross_entropy(pam, target, ignore_index=IGNORE_INDEX)
            + F.cross_entropy(cam, target, ignore_index=IGNORE_INDEX)
        )
    return total, main


def learning_rate(step: int, total_steps: int, base: float, warmup: int) -> float:
    """Linear warm-up, then the official "poly" decay ``(1 - step / total) ** 0.9``."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return base * warm * max(1.0 - step / max(total_steps, 1), 0.0) ** 0.9


# --- evaluation ---------------------------------------------------------------------------------------------


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` counts, rows = ground truth; ignored / out-of-range ids skipped."""
    valid = target < num_classes
    index = target[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """mIoU over the classes that occur (in truth or prediction), pixel accuracy, per-class IoU."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    total = confusion.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class_iou": {name: (float(iou[i]) if present[i] else None) for i, name in enumerate(classes)},
        "pixels": int(total),
    }


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, config: DANetConfig) -> np.ndarray:
    """Class ids [N, H, W] (uint8/uint16) for a uint8 [N, H, W, 3] batch."""
    was_training = model.training
    model.eval()
    try:
        logits = model(to_input(images, config))
    finally:
        model.train(was_training)
    return logits.argmax(1).numpy().astype(np.uint8 if config.num_classes <= 256 else np.uint16)


def evaluate_pairs(
    model: nn.Module, pairs: Iterable[tuple[np.ndarray, np.ndarray]], config: DANetConfig
) -> dict[str, Any]:
    """Metrics of ``model`` over ``(image [H, W, 3], labels [H, W])`` pairs, one image at a time."""
    confusion = np.zeros((config.num_classes, config.num_classes), np.int64)
    count = 0
    for image, label in pairs:
        pred = predict(model, image[None], config)[0]
        confusion += confusion_matrix(pred, label, config.num_classes)
        count += 1
    return {**metrics_from_confusion(confusion, config.classes), "images": count}


def evaluate_scenes(
    model: nn.Module,
    config: DANetConfig,
    *,
    count: int,
    seed: int,
    size: tuple[int, int],
    batch_size: int = 8,
) -> dict[str, Any]:
    """Metrics on ``count`` held-out scenes (``synthetic.HELDOUT_STREAM``, data set ``seed``)."""
    confusion = np.zeros((config.num_classes, config.num_classes), np.int64)
    for start in range(0, count, batch_size):
        batch = scene_batch(
            range(start, min(start + batch_size, count)),
            seed=seed,
            size=size,
            stream=synthetic.HELDOUT_STREAM,
        )
        confusion += confusion_matrix(predict(model, batch.images, config), batch.labels, config.num_classes)
    result = metrics_from_confusion(confusion, config.classes)
    result.update(images=count, seed=seed, stream=synthetic.HELDOUT_STREAM, size=list(size))
    return result


# --- training state -----------------------------------------------------------------------------------------


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never leaves a truncated state file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, options: TrainOptions) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no training state at {path} (nothing to resume)")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')}, expected {STATE_VERSION}")
    saved, current = state["options"], options.fingerprint()
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise ValueError(f"{path}: cannot resume with different options ({details})")
    return state


# --- the loop ----------------------------------------------------------------------------------------------


def plan_summary(options: TrainOptions, config: DANetConfig, source: BatchSource, parameters: int) -> str:
    """One paragraph on what this run will do, before it spends minutes doing it."""
    images = options.steps_per_epoch * options.batch_size
    height, width = options.size
    if isinstance(source, FolderSource):
        passes = options.epochs * images / max(len(source), 1)
        data = f"{options.data} ({len(source)} image/label pairs, each seen ~{passes:.0f} times, randomly cropped)"
    else:
        data = "fresh procedural street scenes (models/synthetic.py)"
    return (
        f"training {config.name}: DANet-R{config.depth}, {parameters / 1e6:.2f} M parameters, "
        f"{config.num_classes} classes ({', '.join(config.classes[:8])}{', ...' if config.num_classes > 8 else ''}); "
        f"{options.epochs} epochs x {images} images at {height}x{width} (batch {options.batch_size}, "
        f"{options.steps_per_epoch * options.epochs} steps, {options.threads} threads) from {data}; "
        f"writes {options.weights_path} and {options.report_path.name}"
    )


def train(options: TrainOptions) -> dict[str, Any]:
    """Run (or resume) training, write the weights and the report; returns the report."""
    torch.set_num_threads(options.threads)
    options.output.mkdir(parents=True, exist_ok=True)
    config = build_config(options)
    source = build_source(options, config.num_classes)

    torch.manual_seed(options.seed)
    model = build_danet(config)
    logger.info("%s", plan_summary(options, config, source, sum(p.numel() for p in model.parameters())))
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if options.resume:
        state = load_state(options.state_path, options)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, elapsed, history = state["epoch"], float(state["elapsed_s"]), list(state["history"])
        logger.info("resuming %s after epoch %d/%d", options.state_path, start_epoch, options.epochs)
    elif options.state_path.exists():
        logger.warning("%s exists; starting afresh (pass --resume to continue it)", options.state_path)

    steps = options.steps_per_epoch
    total_steps = steps * options.epochs
    for epoch in range(start_epoch, options.epochs):
        started = time.perf_counter()
        model.train()
        running = 0.0
        bar = tqdm(
            range(steps),
            desc=f"epoch {epoch + 1}/{options.epochs}",
            disable=not options.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for step in bar:
            batch = source.batch(epoch, step, options.batch_size)
            lr = learning_rate(epoch * steps + step, total_steps, options.lr, options.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            target = torch.from_numpy(batch.labels.astype(np.int64))
            outputs = model(to_input(batch.images, config), aux=True)
            loss, main = segmentation_loss(outputs, target, options.aux_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {step}; lower --lr"
                )
            running += main.item()
            bar.set_postfix(loss=f"{main.item():.3f}", lr=f"{lr:.2e}")
        bar.close()
        elapsed += time.perf_counter() - started
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": running / steps, "elapsed_s": round(elapsed, 1)}
        if options.data is None and options.monitor_count > 0:
            monitor = evaluate_scenes(
                model, config, count=options.monitor_count, seed=options.seed, size=options.size
            )
            entry["heldout_miou"] = round(monitor["miou"], 4)
        history.append(entry)
        logger.info("epoch %d/%d: %s", epoch + 1, options.epochs, json.dumps(entry))
        save_state(
            options.state_path,
            {
                "version": STATE_VERSION,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "elapsed_s": elapsed,
                "history": history,
                "options": options.fingerprint(),
                "config": config.to_json(),
            },
        )

    model.eval()
    report = _finish(model, config, options, source, history, elapsed)
    if not options.keep_checkpoint:
        options.state_path.unlink(missing_ok=True)
    return report


def _finish(
    model: DANet,
    config: DANetConfig,
    options: TrainOptions,
    source: BatchSource,
    history: list[dict[str, Any]],
    elapsed: float,
) -> dict[str, Any]:
    from models.checkpoints.native import save_native

    save_native(model, config, options.weights_path)
    options.weights_path.chmod(0o644)  # safetensors creates its files 0600; weights are meant to be shared
    started = time.perf_counter()
    if options.data is None:
        evaluation = evaluate_scenes(
            model, config, count=options.eval_count, seed=options.seed, size=options.size
        )
        evaluation["split"] = "held-out synthetic scenes (a seed stream training never draws from)"
    elif options.val_data is not None:
        pairs = FolderSource(options.val_data, size=options.size, num_classes=config.num_classes).load_all()
        evaluation = evaluate_pairs(model, pairs, config)
        evaluation["split"] = f"validation folder {options.val_data} (full resolution)"
    else:
        assert isinstance(source, FolderSource)
        evaluation = evaluate_pairs(model, source.load_all(), config)
        evaluation["split"] = "the training folder itself (no --val-data given): not a held-out score"
    eval_seconds = time.perf_counter() - started
    weights = options.weights_path.read_bytes()
    report = {
        "model": config.name,
        "weights": options.weights_path.name,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "weights_bytes": len(weights),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": config.to_dict(),
        "data": source.describe(),
        "training": {
            "epochs": options.epochs,
            "steps": options.steps_per_epoch * options.epochs,
            "batch_size": options.batch_size,
            "images_seen": options.steps_per_epoch * options.epochs * options.batch_size,
            "optimizer": f"AdamW(lr={options.lr}, weight_decay={options.weight_decay}), "
            f"warm-up {options.warmup_steps} steps, poly 0.9",
            "loss": f"CE(fused) + {options.aux_weight} * (CE(pam) + CE(cam)), ignore index {IGNORE_INDEX}",
            "seed": options.seed,
            "seconds": round(elapsed, 1),
            "torch_threads": options.threads,
            "torch_version": torch.__version__,
            "history": history,
        },
        "evaluation": {**evaluation, "seconds": round(eval_seconds, 1)},
    }
    options.report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


# --- command line ------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 16:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW with sides >= 16, got {text!r}")
    return values[0], values[1]


def parse_args(argv: Sequence[str] | None = None) -> TrainOptions:
    defaults = TrainOptions(output=Path("runs/danet-train"))
    p = argparse.ArgumentParser(
        prog="danet-train",
        description="Train a DANet on CPU: on procedural scenes (the embedded default model) or on a folder "
        "of images/ + labels/ PNGs (--data).",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=defaults.output,
        help=f"folder for weights, report, state ({defaults.output})",
    )
    p.add_argument("--name", help=f"model name (default {DEFAULT_MODEL_NAME}, or the --data folder's name)")
    p.add_argument("--data", type=Path, help="folder with images/ and labels/ (ids per pixel, 255 = ignore)")
    p.add_argument("--val-data", type=Path, help="held-out folder (same layout) for the final report")
    p.add_argument(
        "--classes",
        metavar="NAME|FILE",
        help=f"required with --data: a built-in label set ({', '.join(available_label_sets())}) "
        'or a file: a JSON list of names (["sky", "road"]), JSON {"classes": [...], "palette": [[r, g, b], ...]}, '
        "or a text file with one name per line; label PNG value i is class i",
    )
    p.add_argument("--size", type=_size, default=defaults.size, help="training size, SIZE or HxW (160)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--epoch-size", type=int, default=defaults.epoch_size, help="images per epoch")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument(
        "--aux-weight", type=float, default=defaults.aux_weight, help="weight of the PAM/CAM losses"
    )
    p.add_argument("--depth", type=int, default=defaults.depth, choices=(18, 34, 50, 101, 152))
    p.add_argument("--no-deep-stem", dest="deep_stem", action="store_false", help="7x7 stem instead")
    p.add_argument("--stem-width", type=int, default=defaults.stem_width)
    p.add_argument("--base-width", type=int, default=defaults.base_width)
    p.add_argument("--head-channels", type=int, help="DANet head width (default: backbone channels / 4)")
    p.add_argument("--output-stride", type=int, default=defaults.output_stride, choices=(8, 16))
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--eval-count", type=int, default=defaults.eval_count, help="held-out scenes to score")
    p.add_argument(
        "--monitor-count", type=int, default=defaults.monitor_count, help="scenes scored per epoch"
    )
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads (2)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/NAME.last.pt")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep OUTPUT/NAME.last.pt at the end")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    name = args.name or (args.data.resolve().name if args.data is not None else DEFAULT_MODEL_NAME)
    for key in ("epochs", "epoch_size", "batch_size", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.data is None and (args.classes is not None or args.val_data is not None):
        p.error("--classes and --val-data only apply with --data")
    values = {k: v for k, v in vars(args).items() if k != "name"}
    return replace(defaults, name=name, **values)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = parse_args(argv)
    try:
        report = train(options)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    evaluation = report["evaluation"]
    sys.stdout.write(
        f"{options.weights_path}: mIoU {evaluation['miou']:.4f}, pixel accuracy "
        f"{evaluation['pixel_accuracy']:.4f} on {evaluation['images']} images "
        f"({evaluation['split']}); trained {report['training']['seconds']:.0f} s; report {options.report_path}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
