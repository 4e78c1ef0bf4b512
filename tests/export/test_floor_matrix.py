"""The default rule accepts every faithful checkpoint of the matrix and rejects every mutation.

The default run checks that re-binding weights into an exported graph is what ``danet-export`` would
write (bit for bit), and judges a few fast cases on the layout the default run exports anyway
(official R50 deep stem OS8) at the smallest and largest logit scales. ``-m matrix`` (CI runs it)
judges all 25 checkpoints of :func:`tests.export.matrix.cases` (five layouts x five seeds, max
|logit| ~10 to several hundred) and every mutation of ``test_mutations.py`` on one checkpoint per
layout at the largest scale. See ``tests/export/matrix.py`` for how the cases are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.floor import torch_references
from export.verify import DEFAULT_TOLERANCE, VerificationReport, run_reference, verify_against_torch
from models.checkpoints import load_checkpoint
from tests.export.matrix import SCALES, SEEDS, SHAPES, build_case, cases, load_options
from tests.export.rebind import rebind
from tests.export.test_mutations import (
    GRAPH_MUTATIONS,
    MODEL_MUTATIONS,
    graph_mutation_report,
    model_mutation_report,
)

FAST_LAYOUT = "official-r50-deepstem-os8"  # exported by the default run anyway (fidelity, mutations)


def _judge(loaded: Any, graph: onnx.ModelProto) -> VerificationReport:
    """Exactly ``export_onnx``'s verification call with default flags (small shapes)."""
    truth, floors = torch_references(loaded.model, loaded.config)
    report = verify_against_torch(graph, truth, floors, shapes=SHAPES, tolerance=DEFAULT_TOLERANCE)
    print(f"{report.max_abs_logit_diff / report.noise_floor:.2f}x max floor | {report.summary()}")
    return report


def _accepted(report: VerificationReport) -> None:
    assert report.passed, report.summary()
    assert len(report.floor_spread) == 5 and 0 < report.noise_floor_min <= report.noise_floor


@pytest.mark.timeout(1200)  # builds the shared ResNet-50 export when this file runs first
def test_rebind_reproduces_the_export_bit_for_bit(realistic: Any, tmp_path: Path) -> None:
    checkpoint, _, report = realistic(FAST_LAYOUT)
    graph = onnx.load(report["artifacts"][0]["path"])
    loaded = load_checkpoint(checkpoint, **load_options(FAST_LAYOUT))
    rebound = rebind(graph, loaded.model)
    for ours, theirs in zip(rebound.graph.initializer, graph.graph.initializer, strict=True):
        assert ours.name == theirs.name
        assert np.array_equal(numpy_helper.to_array(ours), numpy_helper.to_array(theirs)), ours.name
    # and another checkpoint really changes the weights (folded BN included)
    other, _ = build_case(realistic, tmp_path, FAST_LAYOUT, 0, SCALES[0])
    changed = rebind(graph, other.model)
    weights = {t.name: numpy_helper.to_array(t) for t in changed.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    folded = [name for name in weights if name.endswith(".weight_bias")]
    assert folded and all(not np.array_equal(weights[name], original[name]) for name in folded)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed,scale", [(0, SCALES[0]), (1, SCALES[-1])])
def test_default_flags_accept_fast_cases(realistic: Any, tmp_path: Path, seed: int, scale: float) -> None:
    loaded, graph = build_case(realistic, tmp_path, FAST_LAYOUT, seed, scale)
    report = _judge(loaded, graph)
    _accepted(report)
    assert report.logit_scale > (100 if scale >= 300 else 5)


# --------------------------------------------------------------------------- -m matrix
@pytest.mark.matrix
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("layout,seed,scale", cases())
def test_matrix_default_flags_accept(
    realistic: Any, tmp_path: Path, layout: str, seed: int, scale: float
) -> None:
    loaded, graph = build_case(realistic, tmp_path, layout, seed, scale)
    _accepted(_judge(loaded, graph))


@pytest.mark.matrix
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("layout", sorted({layout for layout, _, _ in cases()}))
def test_matrix_mutations_are_rejected(realistic: Any, tmp_path: Path, layout: str) -> None:
    loaded, graph = build_case(realistic, tmp_path, layout, SEEDS[0], SCALES[-1])
    truth, floors = torch_references(loaded.model, loaded.config)
    reference = run_reference(truth, floors, shapes=SHAPES)
    for name in GRAPH_MUTATIONS:
        report = graph_mutation_report(graph, reference, name)
        print(f"{layout} {name}: {report.max_abs_logit_diff / report.allowed_logit_diff:.1f}x bound")
    for name in MODEL_MUTATIONS:
        report = model_mutation_report(loaded, reference, name)
        print(f"{layout} {name}: {report.max_abs_logit_diff / report.allowed_logit_diff:.1f}x bound")
