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
from export.quantize import (
    CalibrationError,
    attention_projection_convs,
    calibration_images,
    normalisation_as_conv,
)


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


def test_int8_chains_integer_convolutions_without_float_passes(variants: Any) -> None:
    """No DequantizeLinear -> QuantizeLinear requantisation between a convolution and its ReLU, and the
    input normalisation is one convolution on the pixels quantised exactly (scale 1, zero point 0)."""
    int8 = _by_precision(variants, "int8")
    assert int8.details["normalisation_as_conv"] is True
    model = onnx.load(str(int8.path))
    producers = {output: node for node in model.graph.node for output in node.output}
    # The old graph had Conv -> Q -> DQ -> Relu -> Q -> DQ after every convolution, which onnxruntime
    # turns into a float requantisation pass (the two Q's have different ranges).
    relus_behind_quantised = [
        node.name
        for node in model.graph.node
        if node.op_type == "Relu" and producers.get(node.input[0], node).op_type == "DequantizeLinear"
    ]
    assert relus_behind_quantised == []
    requantised = [
        node.name
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
        and producers.get(node.input[0], node).op_type == "DequantizeLinear"
    ]
    assert requantised == []
    assert not any(node.op_type in ("Sub", "Mul") and "mean" in node.input for node in model.graph.node)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    conv = next(node for node in model.graph.node if node.name == "input_normalize")
    dequantize = producers[conv.input[0]]
    quantize = producers[dequantize.input[0]]
    assert producers[quantize.input[0]].op_type == "Cast"
    assert float(constants[quantize.input[1]]) == 1.0 and int(constants[quantize.input[2]]) == 0


def _normalisation_graph(first: str) -> onnx.ModelProto:
    """uint8 NHWC image -> Transpose -> Cast -> Sub(mean) -> Mul(inv_std) (or Mul first, which is no match)."""
    from onnx import TensorProto, helper, numpy_helper

    mean = numpy_helper.from_array(
        np.array([123.675, 116.28, 103.53], np.float32).reshape(1, 3, 1, 1), "mean"
    )
    inv = np.array([1 / 58.395, 1 / 57.12, 1 / 57.375], np.float32).reshape(1, 3, 1, 1)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["pixels"], to=TensorProto.FLOAT),
    ]
    if first == "sub":
        nodes += [
            helper.make_node("Sub", ["pixels", "mean"], ["centred"]),
            helper.make_node("Mul", ["centred", "inv_std"], ["x"]),
        ]
    else:
        nodes += [
            helper.make_node("Mul", ["pixels", "inv_std"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "mean"], ["x"]),
        ]
    graph = helper.make_graph(
        nodes,
        "normalise",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 5, 7, 3])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 7])],
        [mean, numpy_helper.from_array(inv, "inv_std")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_normalisation_as_conv_computes_the_same_values() -> None:
    import onnxruntime as ort

    image = np.random.default_rng(3).integers(0, 256, size=(1, 5, 7, 3), dtype=np.uint8)
    original = _normalisation_graph("sub")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert normalisation_as_conv(rewritten) == "pixels"
    assert [node.op_type for node in rewritten.graph.node] == ["Transpose", "Cast", "Conv"]
    onnx.checker.check_model(rewritten, full_check=True)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"image": image}
        )[0]
        for m in (original, rewritten)
    ]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-5)
    assert float(np.abs(run[0]).max()) > 1.5  # a real normalisation, not zeros


def test_normalisation_as_conv_leaves_other_graphs_alone() -> None:
    model = _normalisation_graph("mul")
    before = model.SerializeToString()
    assert normalisation_as_conv(model) is None
    assert model.SerializeToString() == before


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
