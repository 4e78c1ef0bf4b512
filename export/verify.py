"""Verification: ``onnx.checker``, then the graph against PyTorch (or a variant against fp32).

What is compared, per input (several sizes: square, non-square, odd, and a batch of two):

* ``logits``: the maximum absolute difference. The shipped graph may not expose logits; the tensor
  is still computed inside it under that name (labels and confidence derive from it), so
  :func:`with_logits_output` adds it as an extra output of *the same graph* for the comparison;
* ``labels``: the fraction of pixels whose class agrees with the reference argmax;
* ``confidence``: the maximum absolute difference.

fp32 is held to ``atol`` (1e-3) on logits and ``min_agreement`` (99.99%) on labels; fp16/int8
variants are compared with the verified fp32 graph and held to their own agreement floor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from common.contract import INPUT_IMAGE, OUTPUT_CONFIDENCE, OUTPUT_LABELS, OUTPUT_LOGITS

__all__ = [
    "DEFAULT_VERIFY_SHAPES",
    "CaseResult",
    "VerificationError",
    "VerificationReport",
    "check_graph",
    "compare_graphs",
    "make_inputs",
    "ort_session",
    "verify_against_torch",
    "with_logits_output",
]

#: (batch, height, width): square (batch of two), non-square, odd.
DEFAULT_VERIFY_SHAPES: tuple[tuple[int, int, int], ...] = ((2, 96, 96), (1, 80, 144), (1, 97, 131))

Outputs = dict[str, np.ndarray]


class VerificationError(Exception):
    """The exported graph is invalid or differs from its reference beyond tolerance."""

    def __init__(self, message: str, report: VerificationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class CaseResult:
    """One input batch compared with the reference."""

    shape: tuple[int, int, int]  # (batch, height, width)
    max_abs_logit_diff: float
    max_abs_confidence_diff: float
    agreement: float  # fraction of pixels with the same class
    pixels: int


@dataclass
class VerificationReport:
    """All cases of one comparison, with the thresholds they were held to."""

    subject: str  # e.g. "fp32 ONNX vs PyTorch", "fp16 ONNX vs fp32 ONNX"
    provider: str
    min_agreement: float
    atol: float | None
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def max_abs_logit_diff(self) -> float:
        return max((case.max_abs_logit_diff for case in self.cases), default=0.0)

    @property
    def max_abs_confidence_diff(self) -> float:
        return max((case.max_abs_confidence_diff for case in self.cases), default=0.0)

    @property
    def agreement(self) -> float:
        """Pixel-weighted agreement over all cases."""
        total = sum(case.pixels for case in self.cases)
        if total == 0:
            return 1.0
        return sum(case.agreement * case.pixels for case in self.cases) / total

    @property
    def passed(self) -> bool:
        within_atol = self.atol is None or self.max_abs_logit_diff <= self.atol
        return bool(self.cases) and within_atol and self.agreement >= self.min_agreement

    def summary(self) -> str:
        """``<subject>: max |dlogit| 3.1e-06, argmax agreement 100.0000% (N px, 3 sizes) on CPU``."""
        limits = [f">= {self.min_agreement:.4%}"]
        if self.atol is not None:
            limits.insert(0, f"|dlogit| <= {self.atol:g}")
        sizes = ", ".join(f"{b}x{h}x{w}" for b, h, w in (case.shape for case in self.cases))
        return (
            f"{self.subject}: max |dlogit| {self.max_abs_logit_diff:.3g}, "
            f"max |dconfidence| {self.max_abs_confidence_diff:.3g}, argmax agreement {self.agreement:.4%} "
            f"over {sum(c.pixels for c in self.cases)} px ({sizes}) on {self.provider} "
            f"[{'ok' if self.passed else 'FAILED'}: {', '.join(limits)}]"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            max_abs_logit_diff=self.max_abs_logit_diff,
            max_abs_confidence_diff=self.max_abs_confidence_diff,
            agreement=self.agreement,
            passed=self.passed,
        )
        return data


def check_graph(model: onnx.ModelProto | Path) -> None:
    """``onnx.checker`` with full type/shape inference; raises :class:`VerificationError`."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerificationError(f"onnx.checker rejected the graph: {first_line}") from None


def with_logits_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs its internal ``logits`` tensor (no-op if already there)."""
    if any(output.name == OUTPUT_LOGITS for output in model.graph.output):
        return model
    if not any(OUTPUT_LOGITS in node.output for node in model.graph.node):
        raise VerificationError(
            f"the graph computes no tensor named {OUTPUT_LOGITS!r}; it was not written by danet-export"
        )
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT_LOGITS, onnx.TensorProto.FLOAT, None))
    return copy


def ort_session(model: onnx.ModelProto | Path, providers: Sequence[str] | None = None) -> Any:
    """An onnxruntime session (CPU unless ``providers`` says otherwise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers or ["CPUExecutionProvider"]))


def make_inputs(shapes: Sequence[tuple[int, int, int]], seed: int = 0) -> list[np.ndarray]:
    """uint8 [B, H, W, 3] batches: procedural street scenes when possible, else smooth noise.

    Scenes look like what the models are trained on, so the class maps are not dominated by
    near-ties the way pure noise is.
    """
    rng = np.random.default_rng(seed)
    batches = []
    for index, (batch, height, width) in enumerate(shapes):
        images = []
        for item in range(batch):
            try:
                from models.synthetic import generate_scene

                image, _ = generate_scene(seed, height, width, index=index * 16 + item, stream=1)
            except (ImportError, ValueError):
                image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            images.append(image)
        batches.append(np.stack(images).astype(np.uint8))
    return batches


def _compare(shape: tuple[int, int, int], ours: Outputs, reference: Outputs) -> CaseResult:
    logits = ours[OUTPUT_LOGITS].astype(np.float64)
    ref_logits = reference[OUTPUT_LOGITS].astype(np.float64)
    if logits.shape != ref_logits.shape:
        raise VerificationError(f"logits shape {logits.shape} differs from the reference {ref_logits.shape}")
    labels, ref_labels = ours[OUTPUT_LABELS], reference[OUTPUT_LABELS]
    if labels.shape != ref_labels.shape or labels.shape != (shape[0], shape[1], shape[2]):
        raise VerificationError(
            f"labels shape {labels.shape} differs from the input {shape} or the reference {ref_labels.shape}"
        )
    confidence_diff = np.abs(ours[OUTPUT_CONFIDENCE].astype(np.float64) - reference[OUTPUT_CONFIDENCE])
    return CaseResult(
        shape=shape,
        max_abs_logit_diff=float(np.nan_to_num(np.abs(logits - ref_logits), nan=np.inf).max()),
        max_abs_confidence_diff=float(np.nan_to_num(confidence_diff, nan=np.inf).max()),
        agreement=float((labels.astype(np.int64) == ref_labels.astype(np.int64)).mean()),
        pixels=int(labels.size),
    )


def _run(session: Any, batch: np.ndarray) -> Outputs:
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_IMAGE: batch}), strict=True))


def _provider(session: Any) -> str:
    return str(session.get_providers()[0]).replace("ExecutionProvider", "")


def verify_against_torch(
    graph: onnx.ModelProto | Path,
    reference: Callable[[np.ndarray], Outputs],
    *,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_VERIFY_SHAPES,
    atol: float = 1e-3,
    min_agreement: float = 0.9999,
    subject: str = "fp32 ONNX vs PyTorch",
) -> VerificationReport:
    """Check ``graph`` and compare it with ``reference`` (uint8 batch -> labels/confidence/logits).

    Raises :class:`VerificationError` (with the report) when a threshold is missed.
    """
    model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph))
    check_graph(model)
    session = ort_session(with_logits_output(model))
    report = VerificationReport(
        subject=subject, provider=_provider(session), min_agreement=min_agreement, atol=atol
    )
    for shape, batch in zip(shapes, make_inputs(shapes), strict=True):
        report.cases.append(_compare(shape, _run(session, batch), reference(batch)))
    if not report.passed:
        raise VerificationError(f"verification failed: {report.summary()}", report)
    return report


def compare_graphs(
    candidate: onnx.ModelProto | Path,
    reference: onnx.ModelProto | Path,
    *,
    subject: str,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_VERIFY_SHAPES,
    min_agreement: float,
    providers: Sequence[str] | None = None,
) -> VerificationReport:
    """Check ``candidate`` (e.g. fp16/int8) and compare it with the verified ``reference`` graph.

    ``providers`` runs the candidate elsewhere (e.g. CUDA for fp16); the reference runs on CPU.
    Raises :class:`VerificationError` (with the report) below ``min_agreement``.
    """
    candidate_model = candidate if isinstance(candidate, onnx.ModelProto) else onnx.load(str(candidate))
    reference_model = reference if isinstance(reference, onnx.ModelProto) else onnx.load(str(reference))
    check_graph(candidate_model)
    ours = ort_session(with_logits_output(candidate_model), providers)
    theirs = ort_session(with_logits_output(reference_model))
    report = VerificationReport(
        subject=subject, provider=_provider(ours), min_agreement=min_agreement, atol=None
    )
    for shape, batch in zip(shapes, make_inputs(shapes), strict=True):
        report.cases.append(_compare(shape, _run(ours, batch), _run(theirs, batch)))
    if not report.passed:
        raise VerificationError(f"verification failed: {report.summary()}", report)
    return report
