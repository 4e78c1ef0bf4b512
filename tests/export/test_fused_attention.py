"""``--attention fused``: the position attention as one MultiHeadAttention node, equal to the Scan path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest

from export.onnx_export import ExportError, export_onnx, torch_reference
from export.verify import judge, onnx_runner, run_reference

SHAPES = ((2, 64, 80), (1, 57, 83))


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory, tiny_loaded: Any) -> Any:
    return export_onnx(tiny_loaded, tmp_path_factory.mktemp("fused") / "fused.onnx", attention="fused")


def test_fused_graph_has_one_attention_node_and_no_scan(fused: Any) -> None:
    model = onnx.load(str(fused.output))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Scan" not in ops
    (mha,) = [node for node in model.graph.node if node.op_type == "MultiHeadAttention"]
    assert mha.domain == "com.microsoft"
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in mha.attribute}
    assert attributes == {"num_heads": 1, "scale": 1.0}
    assert fused.verification is not None and fused.verification.passed  # default rule vs float64


def test_fused_equals_scan_within_the_noise_floor_on_cpu(
    fused: Any, tiny_export: Any, tiny_loaded: Any
) -> None:
    """|fused - f64| <= max(k x |scan - f64|, rtol x max|f64|): the Scan graph is the floor here."""
    import torch

    scan, _ = onnx_runner(Path(tiny_export.output))
    reference = run_reference(
        torch_reference(tiny_loaded.model, tiny_loaded.config, torch.float64),
        scan,
        shapes=SHAPES,
        floor_name="scan ONNX",
    )
    runner, provider = onnx_runner(Path(fused.output))
    report = judge(runner, reference, subject="fused vs float64, scan as floor", provider=provider)
    assert provider == "CPU"
    assert report.passed, report.summary()
    assert report.agreement == 1.0


def test_unknown_attention_mode_is_an_export_error(tiny_loaded: Any, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--attention"):
        export_onnx(tiny_loaded, tmp_path / "x.onnx", attention="flash")
