"""The models a benchmark run measures, prepared before any timing starts.

* ``default``: the embedded default model (``models/weights``), its checkpoint for PyTorch eager, and
  int8/fp16 variants exported from that checkpoint;
* ``r50`` / ``r101``: DANet-ResNet50/101-OS8 (deep stem, 19 classes) with seeded random weights and
  calibrated batch-norm statistics (:func:`calibrate_batch_norm`), saved as a native checkpoint and
  exported on the fly with ``export.onnx_export`` (random weights decide nothing but speed, which is
  what is measured);
* ``tiny``: :mod:`bench.tiny_model` (harness smoke tests; no checkpoint, no variants);
* an explicit ``--model PATH`` (plus optional ``--checkpoint`` / ``--int8-model`` / ``--fp16-model``).

Exports are cached in the work directory by architecture, seed and precision so that a second run
does not pay for them again (``--rebuild`` to redo). Everything that imports torch runs in a
separate process (see :mod:`bench.isolate`), so the measuring processes never carry torch's memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.contract import DEFAULT_CHECKPOINT, DEFAULT_MODEL_NAME, DEFAULT_ONNX

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "fp16")


@dataclass
class PreparedModel:
    """One model under test: the fp32 ONNX (the floor's and the server's), and what else could be built."""

    name: str
    arch: str
    onnx: Path
    checkpoint: Path | None = None
    variants: dict[str, Path] = field(default_factory=dict)  # precision -> ONNX file
    notes: list[str] = field(default_factory=list)  # why a variant or eager run is missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "onnx": str(self.onnx),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "variants": {k: str(v) for k, v in self.variants.items()},
            "notes": list(self.notes),
        }


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _export(
    checkpoint: Path, output: Path, precisions: list[str], *, logits: bool, rebuild: bool, notes: list[str]
) -> dict[str, Path]:
    """Export ``checkpoint`` to ``output`` (fp32) plus its fp16/int8 variants; returns precision -> file.

    Cached: files already in the work directory are reused unless ``rebuild``. If one combined export
    fails, each variant is retried on its own so that one broken precision does not hide the others.
    """
    from export.onnx_export import export_onnx, variant_path
    from models.checkpoints import load_checkpoint

    wanted = [p for p in precisions if p != "fp32"]
    paths = {"fp32": output, **{p: variant_path(output, p) for p in wanted}}
    if not rebuild and all(path.exists() for path in paths.values()):
        return paths
    loaded = load_checkpoint(checkpoint)

    def run(*, fp16: bool = False, int8: bool = False) -> None:
        # verify=False: the benchmark measures agreement itself, on its own images, and reports it.
        export_onnx(loaded, output, logits=logits, fp16=fp16, int8=int8, verify=False, calibration_count=8)

    try:
        logger.info("exporting %s (fp32%s)", output.name, "".join(f", {p}" for p in wanted))
        run(fp16="fp16" in wanted, int8="int8" in wanted)
        return paths
    except Exception as exc:
        if not wanted:
            raise
        logger.warning("combined export failed (%s); exporting each precision on its own", _one_line(exc))
    run()
    done = {"fp32": output}
    for precision in wanted:
        try:
            run(fp16=precision == "fp16", int8=precision == "int8")
            done[precision] = paths[precision]
        except Exception as exc:  # report, never hide: the table says why the row is missing
            notes.append(f"{precision} export failed: {_one_line(exc)}")
    return done


def prepare_default(work_dir: Path, precisions: list[str], rebuild: bool = False) -> PreparedModel:
    notes: list[str] = []
    if not DEFAULT_ONNX.exists():
        raise FileNotFoundError(f"the embedded default model {DEFAULT_ONNX} is missing")
    checkpoint = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists() else None
    if checkpoint is None:
        notes.append(f"no checkpoint at {DEFAULT_CHECKPOINT}: no PyTorch eager row, no variants")
    variants: dict[str, Path] = {}
    wanted = [p for p in precisions if p != "fp32"]
    if checkpoint is not None and wanted:
        # The served (committed) fp32 file stays the floor; the variants come from the same checkpoint.
        try:
            exported = _export(
                checkpoint,
                work_dir / f"{DEFAULT_MODEL_NAME}.onnx",
                precisions,
                logits=_has_logits(DEFAULT_ONNX),
                rebuild=rebuild,
                notes=notes,
            )
            variants = {p: path for p, path in exported.items() if p != "fp32"}
        except ImportError as exc:
            notes.append(f"variants {wanted} not measured: the export extra is not importable ({exc})")
        except Exception as exc:
            notes.append(f"variants {wanted} not measured: export failed: {_one_line(exc)}")
    return PreparedModel(DEFAULT_MODEL_NAME, "default", DEFAULT_ONNX, checkpoint, variants, notes)


def _has_logits(model: Path) -> bool:
    import onnxruntime as ort

    from common.contract import OUTPUT_LOGITS

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only (no optimiser notes on the console)
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    return any(o.name == OUTPUT_LOGITS for o in session.get_outputs())


def prepare_resnet(
    work_dir: Path, precisions: list[str], *, depth: int = 50, seed: int = 0, rebuild: bool = False
) -> PreparedModel:
    """DANet-ResNet{50,101}-OS8 (deep stem, 19 classes) with seeded random weights: native checkpoint +
    export (+ variants), cached in ``work_dir`` by depth and seed."""
    import torch

    from models.checkpoints.native import save_native
    from models.danet import danet_resnet50, danet_resnet101

    builders = {50: danet_resnet50, 101: danet_resnet101}
    if depth not in builders:
        raise ValueError(f"depth must be one of {sorted(builders)}, got {depth}")
    name = f"danet-r{depth}-os8"
    notes: list[str] = []
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = work_dir / f"{name}-seed{seed}-calibrated"
    checkpoint = stem.with_suffix(".safetensors")
    if rebuild or not checkpoint.exists():
        torch.manual_seed(seed)
        model = builders[depth](num_classes=19, output_stride=8, name=f"{name}-random")
        calibrate_batch_norm(model, seed)
        save_native(model.eval(), model.config, checkpoint)
        rebuild = True  # new weights: stale exports must not be reused
    exported = _export(
        checkpoint, stem.with_suffix(".onnx"), precisions, logits=False, rebuild=rebuild, notes=notes
    )
    variants = {p: path for p, path in exported.items() if p != "fp32"}
    return PreparedModel(name, f"r{depth}", exported["fp32"], checkpoint, variants, notes)


def calibrate_batch_norm(model: Any, seed: int, images: int = 4, size: int = 160) -> None:
    """Give random weights a trained network's batch-norm statistics (cumulative averages over a few
    seeded scene images, one pass in training mode), so activations keep their scale through the net
    as a trained DANet's do, instead of growing layer by layer (or underflowing) with the defaults."""
    import numpy as np
    import torch

    from models.synthetic import generate_scene

    batch = np.stack([generate_scene(seed + i, size, size)[0] for i in range(images)])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()  # 0-255, as config.mean/std
    mean = torch.tensor(model.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.std).view(1, 3, 1, 1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the pass
    model.train()
    with torch.no_grad():
        model((x - mean) / std)
    model.eval()


def prepare_tiny(work_dir: Path) -> PreparedModel:
    from bench.tiny_model import build_tiny_model

    path = build_tiny_model(work_dir / "tiny.onnx", layers=2, channels=8)
    return PreparedModel("tiny", "tiny", path, None, {}, ["tiny harness model: no checkpoint, no variants"])


def prepare_explicit(
    model: Path, checkpoint: Path | None, int8: Path | None, fp16: Path | None, precisions: list[str]
) -> PreparedModel:
    if not model.exists():
        raise FileNotFoundError(f"--model {model} does not exist")
    variants = {k: v for k, v in (("int8", int8), ("fp16", fp16)) if v is not None and k in precisions}
    notes = [] if checkpoint else ["no --checkpoint: no PyTorch eager row"]
    return PreparedModel(model.stem, "explicit", model, checkpoint, variants, notes)
