"""fp16 and int8 variants: written, self-describing, numerically guarded, compared with fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from common.contract import META_MODEL_NAME, META_PRECISION, OUTPUT_LABELS
from export.metadata import read_metadata
from export.onnx_export import VerificationError, export_onnx, variant_path
from export.quantize import CalibrationError, attention_projection_convs, calibration_images


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, tiny_loaded: Any) -> Any:
    out = tmp_path_factory.mktemp("variants") / "tiny.onnx"
    return export_onnx(tiny_loaded, out, logits=True, fp16=True, int8=True, calibration_count=4)


def _by_precision(report: Any, precision: str) -> Any:
    return next(item for item in report.artifacts if item.precision == precision)


def _inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    return {value.name: value.type.tensor_type.elem_type for value in values}


def test_variant_files_names_and_metadata(variants: Any) -> None:
    assert [item.precision for item in variants.artifacts] == ["fp32", "fp16", "int8"]
    for item in variants.artifacts:
        assert item.path.is_file() and item.size_bytes == item.path.stat().st_size
        meta = read_metadata(onnx.load(str(item.path), load_external_data=False))
        assert meta[META_PRECISION] == item.precision
        assert meta[META_MODEL_NAME] == item.model_name
    assert _by_precision(variants, "fp16").path == variant_path(variants.output, "fp16")
    assert _by_precision(variants, "fp16").path.name == "tiny.fp16.onnx"
    assert _by_precision(variants, "int8").model_name == "tiny-int8"


def test_fp16_agreement_reported_and_float32_where_it_matters(variants: Any) -> None:
    fp16 = _by_precision(variants, "fp16")
    report = fp16.verification
    assert report is not None and report.passed
    assert report.subject == "fp16 ONNX vs fp32 ONNX"
    assert 0.99 <= report.agreement <= 1.0
    assert 0 < report.max_abs_logit_diff < 0.1  # fp16 differs, but not wildly
    model = onnx.load(str(fp16.path))
    conv_weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    dtypes = {t.name: t.data_type for t in model.graph.initializer if t.name in conv_weights}
    assert set(dtypes.values()) == {onnx.TensorProto.FLOAT16}
    types = _inferred_types(model)
    for node in model.graph.node:
        if node.op_type in {"ArgMax", "ReduceMax", "Exp", "ReduceSum", "Scan"}:
            assert all(types.get(name) == onnx.TensorProto.FLOAT for name in node.input[:1]), node.op_type
    # the interface does not change with the precision
    outputs = {value.name: value.type.tensor_type.elem_type for value in model.graph.output}
    assert outputs == {
        "labels": onnx.TensorProto.UINT8,
        "confidence": onnx.TensorProto.FLOAT,
        "logits": onnx.TensorProto.FLOAT,
    }


def test_int8_is_quantised_except_attention(variants: Any) -> None:
    int8 = _by_precision(variants, "int8")
    report = int8.verification
    assert report is not None and report.passed and 0.95 <= report.agreement <= 1.0
    model = onnx.load(str(int8.path))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    fp32_model = onnx.load(str(variants.output))
    kept = attention_projection_convs(fp32_model)
    assert len(kept) == 3  # query, key, value projections
    assert int8.details["float_convs"] == kept
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight_is_float = initializers.get(node.input[1]) == onnx.TensorProto.FLOAT
            assert weight_is_float == (node.name in kept), node.name


def test_variant_below_its_floor_is_rejected(tmp_path: Path, tiny_loaded: Any) -> None:
    out = tmp_path / "strict.onnx"
    with pytest.raises(VerificationError) as caught:
        export_onnx(tiny_loaded, out, int8=True, verify=True, calibration_count=2, int8_min_agreement=1.01)
    assert caught.value.report is not None and caught.value.report.subject.startswith("int8")
    assert out.is_file()  # fp32 was verified and kept
    assert not variant_path(out, "int8").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_calibration_images_from_a_directory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for index, size in enumerate([(40, 60), (700, 500), (20, 20)]):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    Image.fromarray(rng.integers(0, 256, size=(30, 30), dtype=np.uint8)).save(tmp_path / "grey.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    images = calibration_images(tmp_path, count=10)
    assert len(images) == 4
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 for image in images)
    assert max(max(image.shape[:2]) for image in images) == 512  # large pictures are shrunk


def test_calibration_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_images(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CalibrationError, match="no readable images"):
        calibration_images(tmp_path)
    generated = calibration_images(None, count=3, size=(48, 64))
    assert [image.shape for image in generated] == [(48, 64, 3)] * 3


def test_labels_agree_with_fp32_on_a_scene(variants: Any) -> None:
    import onnxruntime as ort

    from export.verify import make_inputs

    (batch,) = make_inputs([(1, 88, 120)], seed=11)
    results = {}
    for item in variants.artifacts:
        session = ort.InferenceSession(str(item.path), providers=["CPUExecutionProvider"])
        results[item.precision] = dict(
            zip([o.name for o in session.get_outputs()], session.run(None, {"image": batch}), strict=True)
        )
    for precision in ("fp16", "int8"):
        agreement = (results[precision][OUTPUT_LABELS] == results["fp32"][OUTPUT_LABELS]).mean()
        assert agreement >= 0.9, precision
