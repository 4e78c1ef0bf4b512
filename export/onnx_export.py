"""The export pipeline: checkpoint -> verified, self-describing ONNX (+ fp16/int8 variants, Triton repo).

:func:`export_onnx` is the library entry point behind ``danet-export``. Stages:

1. trace :class:`export.wrapper.SegmentationWrapper` (uint8 NHWC in; normalisation, argmax and
   confidence in-graph; bounded-memory attention) with dynamic batch/height/width;
2. write metadata (classes, palette, architecture, provenance, precision, ...) and save;
3. verify (default): ``onnx.checker``, then the graph judged against the PyTorch model run in float64,
   with the spread of several float32 computations of it as the noise floor (:mod:`export.floor`,
   :mod:`export.verify`), on several sizes; the result is stored in the artifact's ``verification``
   metadata;
4. optional variants, each compared with the verified fp32 graph: ``<stem>.fp16.onnx`` (float16
   network, float32 normalisation/attention/softmax/argmax; for GPU providers) and
   ``<stem>.int8.onnx`` (static QDQ quantisation; for CPUs);
5. optional Triton/KServe model repository.

Files are written next to their final name and moved into place only once verified, so a failed
export never leaves a plausible-looking artifact behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from common.contract import META_VERIFICATION, OUTPUT_LOGITS
from export.attention import ATTENTION_MODES, DEFAULT_ATTENTION, DEFAULT_ATTENTION_BUDGET
from export.floor import torch_reference, torch_references
from export.graph import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export_graph, finalize_graph
from export.metadata import ModelDescription, exporter_version
from export.quantize import CalibrationError, calibration_images, quantize_int8
from export.triton import TritonModel, valid_model_name, write_triton_model
from export.verify import (
    DEFAULT_TOLERANCE,
    DEFAULT_VERIFY_SHAPES,
    Tolerance,
    VerificationError,
    VerificationReport,
    check_graph,
    compare_graphs,
    verify_against_torch,
)

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "ExportReport",
    "VariantResult",
    "check_output",
    "VerificationError",
    "export_onnx",
    "torch_reference",
    "torch_references",
    "variant_path",
]

logger = logging.getLogger(__name__)

#: fp16 logits may differ from fp32 by this fraction of the largest fp32 logit (measured: README).
FP16_RTOL = 0.05

#: progress(step, total, message) is called when each stage starts.
ProgressCallback = Callable[[int, int, str], None]


class ExportError(Exception):
    """The export cannot proceed (bad output path, bad option); one paragraph for the user."""


@dataclass
class VariantResult:
    """One written graph: the fp32 artifact or an fp16/int8 variant."""

    precision: str
    path: Path
    model_name: str
    size_bytes: int
    verification: VerificationReport | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportReport:
    """What :func:`export_onnx` produced and how it was checked."""

    output: Path
    model_name: str
    source_format: str
    source_sha256: str
    opset: int
    outputs: list[str]
    metadata: dict[str, str]
    fp32: VariantResult
    variants: list[VariantResult] = field(default_factory=list)
    triton: list[TritonModel] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def verification(self) -> VerificationReport | None:
        return self.fp32.verification

    @property
    def artifacts(self) -> list[VariantResult]:
        return [self.fp32, *self.variants]

    def to_dict(self) -> dict[str, Any]:
        def variant(item: VariantResult) -> dict[str, Any]:
            return {
                "precision": item.precision,
                "path": str(item.path),
                "model_name": item.model_name,
                "size_bytes": item.size_bytes,
                "verification": item.verification.to_dict() if item.verification else None,
                "details": item.details,
            }

        return {
            "output": str(self.output),
            "model_name": self.model_name,
            "source_format": self.source_format,
            "source_sha256": self.source_sha256,
            "opset": self.opset,
            "outputs": self.outputs,
            "artifacts": [variant(item) for item in self.artifacts],
            "triton": [{"name": t.name, "config": str(t.config), "model": str(t.model)} for t in self.triton],
            "timings_s": {key: round(value, 2) for key, value in self.timings.items()},
        }


def variant_path(output: Path, precision: str) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` / ``model.int8.onnx``."""
    return output.with_name(f"{output.stem}.{precision}{output.suffix or '.onnx'}")


def check_output(output: Path) -> None:
    """Fail early, before minutes of loading and tracing, when ``output`` cannot be written."""
    if output.is_dir():
        raise ExportError(f"Cannot write the ONNX file to {output}: it is a directory; give a file name.")
    blocker = next((p for p in output.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ExportError(
            f"Cannot write the ONNX file to {output}: {blocker} is a file, not a directory. "
            "Choose another --output path."
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ExportError(
            f"Cannot write the ONNX file to {output}: the directory {output.parent} is not writable "
            f"({reason}). Choose another --output path."
        ) from None


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary path next to ``final``, moved onto it only if the block succeeds."""
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial")
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
        # mkstemp creates 0600 files; an artifact gets the usual permissions (0666 & ~umask).
        staging.chmod(0o666 & ~_current_umask())
        os.replace(staging, final)
    finally:
        staging.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _gpu_providers() -> list[str] | None:
    """CUDA for the fp16 check when a GPU and onnxruntime's CUDA provider are both present."""
    import onnxruntime as ort

    has_device = Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()
    if has_device and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return None


def _validate(
    opset: int, name: str, triton_repo: Path | None, shapes: Sequence[tuple[int, int, int]]
) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}.")
    if not name.strip():
        raise ExportError("The model name is empty; pass --name.")
    if triton_repo is not None and not valid_model_name(name):
        raise ExportError(
            f"{name!r} is not usable as a Triton model name (letters, digits, '.', '_' and '-' only); "
            "pass --name."
        )
    if not shapes or any(b < 1 or h < 8 or w < 8 for b, h, w in shapes):
        raise ExportError(f"verification shapes must be (batch>=1, height>=8, width>=8), got {list(shapes)}")


def export_onnx(
    loaded: Any,
    output: Path,
    *,
    logits: bool = False,
    fp16: bool = False,
    int8: bool = False,
    verify: bool = True,
    calibration: Path | None = None,
    triton_repo: Path | None = None,
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    preferred_size: tuple[int, int] | None = None,
    eval_base_size: int | None = None,
    eval_crop_size: int | None = None,
    verify_shapes: Sequence[tuple[int, int, int]] = DEFAULT_VERIFY_SHAPES,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    fp16_min_agreement: float = 0.99,
    int8_min_agreement: float = 0.95,
    calibration_count: int = 16,
    attention_budget: int = DEFAULT_ATTENTION_BUDGET,
    attention: str = DEFAULT_ATTENTION,
    progress: ProgressCallback | None = None,
) -> ExportReport:
    """Export ``loaded`` (a :class:`models.checkpoints.LoadedCheckpoint`) to ``output``.

    ``tolerance`` is the fp32 rule (:class:`export.verify.Tolerance`: noise-floor relative by
    default, ``atol``/``min_agreement`` as expert overrides). Raises :class:`ExportError` for
    unusable options/paths and :class:`VerificationError` (with ``.report``) when a graph misses its
    tolerance; nothing is left at the failed artifact's path.
    """
    output = Path(output)
    config = loaded.config
    model_name = name or output.stem
    _validate(opset, model_name, triton_repo, verify_shapes)
    if attention not in ATTENTION_MODES:
        raise ExportError(f"--attention must be one of {', '.join(ATTENTION_MODES)}, got {attention!r}.")
    check_output(output)
    if int8 and calibration is not None and not Path(calibration).is_dir():
        raise ExportError(f"The calibration directory {calibration} does not exist or is not a directory.")

    plan = {"trace": "Tracing the fp32 graph", "metadata": "Writing metadata"}
    if verify:
        plan["verify"] = "Verifying fp32 against PyTorch float64 (float32 spread as the noise floor)"
    if fp16:
        plan["fp16"] = "Exporting + checking the fp16 variant"
    if int8:
        plan["int8"] = "Quantising + checking the int8 variant"
    if triton_repo is not None:
        plan["triton"] = "Writing the Triton model repository"
    stage = _Stages(plan, progress)

    def describe(precision: str, suffix: str = "") -> ModelDescription:
        return ModelDescription(
            config=config,
            model_name=model_name + suffix,
            source_format=loaded.source_format,
            source_sha256=loaded.sha256,
            precision=precision,
            exporter_version=exporter_version(opset),
            preferred_size=preferred_size,
            eval_base_size=eval_base_size,
            eval_crop_size=eval_crop_size,
        )

    stage("trace")
    graph = export_graph(
        loaded.model, config, opset=opset, attention_budget=attention_budget, attention=attention
    )
    stage("metadata")
    props = describe("fp32").to_props()
    finalize_graph(graph, logits=logits, props=props)

    fp32_verification = None
    with _staged(output) as staging:
        onnx.save(graph, str(staging))
        if verify:
            stage("verify")
            # the written bytes are what gets checked, not the in-memory graph
            truth, floor = torch_references(loaded.model, config)
            fp32_verification = verify_against_torch(
                staging, truth, floor, shapes=verify_shapes, tolerance=tolerance
            )
            _record(graph, staging, fp32_verification)
        else:
            check_graph(staging)
    fp32 = VariantResult("fp32", output, model_name, output.stat().st_size, fp32_verification)
    report = ExportReport(
        output=output,
        model_name=model_name,
        source_format=loaded.source_format,
        source_sha256=loaded.sha256,
        opset=opset,
        outputs=[value.name for value in graph.graph.output],
        metadata=props,
        fp32=fp32,
    )
    del graph

    if fp16:
        stage("fp16")
        report.variants.append(
            _fp16_variant(
                loaded,
                output,
                describe("fp16", "-fp16"),
                logits=logits,
                opset=opset,
                attention_budget=attention_budget,
                attention=attention,
                shapes=verify_shapes if verify else None,
                min_agreement=fp16_min_agreement,
            )
        )
    if int8:
        stage("int8")
        try:
            images = calibration_images(
                Path(calibration) if calibration is not None else None,
                count=calibration_count,
                size=_calibration_size(describe("int8").size),
                mean=config.mean,
            )
        except CalibrationError as exc:
            raise ExportError(str(exc)) from None
        report.variants.append(
            _int8_variant(
                output,
                describe("int8", "-int8"),
                images,
                shapes=verify_shapes if verify else None,
                min_agreement=int8_min_agreement,
            )
        )
    if triton_repo is not None:
        stage("triton")
        for item in report.artifacts:
            kind = "KIND_CPU" if item.precision == "int8" else "KIND_GPU"
            report.triton.append(write_triton_model(Path(triton_repo), item.model_name, item.path, kind=kind))
    report.timings = stage.finish()
    return report


class _Stages:
    """Calls ``progress(i, n, message)`` as each planned stage starts and times the stages."""

    def __init__(self, plan: dict[str, str], progress: ProgressCallback | None) -> None:
        self._plan = plan
        self._progress = progress
        self._current: str | None = None
        self._started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def __call__(self, key: str) -> None:
        self._close()
        self._current = key
        if self._progress is not None:
            self._progress(list(self._plan).index(key) + 1, len(self._plan), self._plan[key])

    def _close(self) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self.timings[self._current] = now - self._started
        self._started = now

    def finish(self) -> dict[str, float]:
        self._close()
        self._current = None
        return self.timings


def _record(graph: onnx.ModelProto, path: Path, report: VerificationReport) -> None:
    """Store the verification summary in the metadata of ``graph`` and rewrite it to ``path``.

    Only ``metadata_props`` changes, so the verified computation is the one written.
    """
    entry = graph.metadata_props.add()
    entry.key = META_VERIFICATION
    entry.value = json.dumps(report.metadata(), separators=(",", ":"))
    onnx.save(graph, str(path))


def _calibration_size(preferred: tuple[int, int], max_side: int = 384) -> tuple[int, int]:
    height, width = preferred
    scale = min(1.0, max_side / max(height, width))
    return max(32, round(height * scale)), max(32, round(width * scale))


def _fp16_variant(
    loaded: Any,
    output: Path,
    description: ModelDescription,
    *,
    logits: bool,
    opset: int,
    attention_budget: int,
    attention: str,
    shapes: Sequence[tuple[int, int, int]] | None,
    min_agreement: float,
) -> VariantResult:
    """Trace the float16 network (see :class:`SegmentationWrapper`) and compare it with fp32."""
    path = variant_path(output, "fp16")
    graph = export_graph(
        loaded.model,
        loaded.config,
        half=True,
        opset=opset,
        attention_budget=attention_budget,
        attention=attention,
    )
    finalize_graph(graph, logits=logits, props=description.to_props())
    verification = None
    with _staged(path) as staging:
        onnx.save(graph, str(staging))
        check_graph(staging)
        if shapes is not None:
            verification = compare_graphs(
                staging,
                output,
                subject="fp16 ONNX vs fp32 ONNX",
                shapes=shapes,
                min_agreement=min_agreement,
                rtol=FP16_RTOL,
                providers=_gpu_providers(),
            )
            _record(graph, staging, verification)
    return VariantResult("fp16", path, description.model_name, path.stat().st_size, verification)


def _int8_variant(
    output: Path,
    description: ModelDescription,
    images: Sequence[np.ndarray],
    *,
    shapes: Sequence[tuple[int, int, int]] | None,
    min_agreement: float,
) -> VariantResult:
    """Quantise the written fp32 graph (see :mod:`export.quantize`) and compare it with fp32."""
    path = variant_path(output, "int8")
    with _staged(path) as staging:
        details = quantize_int8(output, staging, images)
        graph = onnx.load(str(staging))
        has_logits = any(value.name == OUTPUT_LOGITS for value in graph.graph.output)
        finalize_graph(graph, logits=has_logits, props=description.to_props())
        onnx.save(graph, str(staging))
        check_graph(staging)
        verification = None
        if shapes is not None:
            verification = compare_graphs(
                staging, output, subject="int8 ONNX vs fp32 ONNX", shapes=shapes, min_agreement=min_agreement
            )
            _record(graph, staging, verification)
    details["calibration_images"] = len(images)
    logger.debug("int8 details: %s", json.dumps(details))
    return VariantResult("int8", path, description.model_name, path.stat().st_size, verification, details)
