"""Verification catches what it is there to catch: tampered weights, broken graphs, wrong preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from common.contract import META_VERIFICATION
from export.metadata import read_metadata
from export.onnx_export import torch_references
from export.verify import (
    DEFAULT_TOLERANCE,
    ORT_UNOPTIMISED,
    Tolerance,
    VerificationError,
    check_graph,
    compare_graphs,
    verify_against_torch,
    with_logits_output,
)

SHAPES = ((1, 48, 64), (1, 41, 57))


def _load(report: Any) -> onnx.ModelProto:
    return onnx.load(str(report.output))


def _largest_float_initializer(model: onnx.ModelProto) -> onnx.TensorProto:
    floats = [
        t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4
    ]
    return max(floats, key=lambda t: int(np.prod(t.dims)))


def _references(loaded: Any) -> tuple[Any, Any]:
    return torch_references(loaded.model, loaded.config)


def test_untampered_graph_passes_with_tight_numbers(tiny_export: Any, tiny_loaded: Any) -> None:
    report = verify_against_torch(_load(tiny_export), *_references(tiny_loaded), shapes=SHAPES)
    assert report.passed
    assert report.max_abs_logit_diff < 1e-4
    assert 0 < report.noise_floor_min <= report.noise_floor < 1e-4  # float32 PyTorch is not exact either
    # the floor is a spread over several float32 computations, the candidate's own unoptimised run included
    spread = report.floor_spread
    assert len(spread) == 5 and ORT_UNOPTIMISED in spread and all(value > 0 for value in spread.values())
    assert report.noise_floor == max(spread.values()) and report.noise_floor_min == min(spread.values())
    assert report.agreement == 1.0 and report.floor_agreement == 1.0
    rule = DEFAULT_TOLERANCE
    allowed = max(rule.k * report.noise_floor, rule.rtol * report.logit_scale)
    assert report.allowed_logit_diff == pytest.approx(allowed)
    text = report.summary()
    assert "noise floor, 5 float32 computations: " in text and " to " in text
    assert "argmax agreement 100.0000%" in text and "[ok" in text
    assert len(report.cases) == 2 and report.cases[1].shape == (1, 41, 57)
    # the report the export itself produced covers square, non-square and odd sizes
    shapes = [case.shape for case in tiny_export.verification.cases]
    assert any(h == w for _, h, w in shapes) and any(h % 2 and w % 2 for _, h, w in shapes)
    assert any(b > 1 for b, _, _ in shapes)


def test_tampered_weights_are_caught(tiny_export: Any, tiny_loaded: Any) -> None:
    model = _load(tiny_export)
    tensor = _largest_float_initializer(model)
    weights = onnx.numpy_helper.to_array(tensor).copy()
    weights *= 1.05  # a 5% change in one convolution
    tensor.CopyFrom(onnx.numpy_helper.from_array(weights, tensor.name))
    with pytest.raises(VerificationError) as caught:
        verify_against_torch(model, *_references(tiny_loaded), shapes=SHAPES)
    report = caught.value.report
    assert report is not None and not report.passed
    assert report.max_abs_logit_diff > report.allowed_logit_diff
    assert "FAILED" in str(caught.value)


def test_tampered_normalisation_is_caught(tiny_export: Any, tiny_loaded: Any) -> None:
    """Preprocessing drift (the classic ONNX-vs-PyTorch bug) fails verification: here the mean
    on the 0-1 scale instead of 0-255."""
    model = _load(tiny_export)
    mean = next(t for t in model.graph.initializer if t.name == "mean")
    values = onnx.numpy_helper.to_array(mean).copy()
    assert values.shape == (1, 3, 1, 1) and values.min() > 100
    mean.CopyFrom(onnx.numpy_helper.from_array(values / 255.0, mean.name))
    with pytest.raises(VerificationError):
        verify_against_torch(model, *_references(tiny_loaded), shapes=SHAPES)


def test_checker_failure_is_a_verification_error(tiny_export: Any) -> None:
    model = _load(tiny_export)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    conv.input[1] = "no_such_tensor"
    with pytest.raises(VerificationError, match="onnx.checker"):
        check_graph(model)


def test_variant_comparison_fails_below_its_floor(tiny_export: Any, tmp_path: Path) -> None:
    model = _load(tiny_export)
    tensor = next(t for t in model.graph.initializer if t.dims and t.dims[0] == 7 and len(t.dims) == 4)
    weights = onnx.numpy_helper.to_array(tensor).copy()
    tensor.CopyFrom(onnx.numpy_helper.from_array(weights[::-1].copy(), tensor.name))  # swap classes
    with pytest.raises(VerificationError) as caught:
        compare_graphs(model, tiny_export.output, subject="swapped", shapes=SHAPES, min_agreement=0.9)
    assert caught.value.report is not None and caught.value.report.agreement < 0.9


def test_logits_are_exposed_only_from_our_graphs(tiny_export: Any) -> None:
    model = _load(tiny_export)
    exposed = with_logits_output(model)
    assert [o.name for o in exposed.graph.output][-1] == "logits"
    assert [o.name for o in model.graph.output] == ["labels", "confidence"]  # original untouched
    for node in model.graph.node:
        node.output[:] = [name.replace("logits", "renamed") for name in node.output]
    with pytest.raises(VerificationError, match="logits"):
        with_logits_output(model)


def test_expert_overrides_replace_the_relative_rule(tiny_export: Any, tiny_loaded: Any) -> None:
    graph, (truth, floor) = _load(tiny_export), _references(tiny_loaded)
    with pytest.raises(VerificationError, match="--atol"):
        verify_against_torch(graph, truth, floor, shapes=SHAPES, tolerance=Tolerance(atol=1e-12))
    with pytest.raises(VerificationError, match="agreement >= 101"):
        verify_against_torch(
            graph, truth, floor, shapes=SHAPES, tolerance=Tolerance(atol=10.0, min_agreement=1.01)
        )
    loose = verify_against_torch(graph, truth, floor, shapes=SHAPES, tolerance=Tolerance(atol=10.0))
    assert loose.passed and loose.allowed_logit_diff == 10.0


def test_verification_is_stored_in_the_artifact(tiny_export: Any) -> None:
    stored = read_metadata(_load(tiny_export))[META_VERIFICATION]
    report = tiny_export.verification
    assert stored["passed"] is True and stored["subject"] == report.subject
    assert stored["max_abs_logit_diff"] == pytest.approx(report.max_abs_logit_diff, rel=1e-3)
    floor = stored["noise_floor"]  # the spread, not one number
    assert floor["max"] == pytest.approx(report.noise_floor, rel=1e-3)
    assert floor["min"] == pytest.approx(report.noise_floor_min, rel=1e-3)
    assert floor["min"] <= floor["max"] and len(floor["computations"]) == 5
    assert stored["floor_agreement"]["min"] <= stored["floor_agreement"]["max"]
    assert stored["agreement"] == pytest.approx(report.agreement)
    rule = DEFAULT_TOLERANCE
    assert stored["rule"] == {"k": rule.k, "rtol": rule.rtol, "margin": rule.margin}
    assert len(stored["shapes"]) == 3
