"""--triton-repo: repository layout and a config.pbtxt that Triton's own schema accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.triton import render_config, valid_model_name, write_triton_model
from tests.onnx_fixtures import build_model, write_model


def _parse(text: str) -> Any:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)  # raises on anything Triton's schema does not know
    return config


def test_layout_and_config(tmp_path: Path) -> None:
    source = write_model(tmp_path / "src" / "seg.onnx", model_name="seg")
    written = write_triton_model(tmp_path / "repo", "seg", source)
    assert written.config == tmp_path / "repo" / "seg" / "config.pbtxt"
    assert written.model == tmp_path / "repo" / "seg" / "1" / "model.onnx"
    assert written.model.read_bytes() == source.read_bytes()
    config = _parse(written.config.read_text())
    assert config.name == "seg"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0
    (image,) = config.input
    assert image.name == "image" and list(image.dims) == [-1, -1, 3]
    assert image.data_type == model_config_pb2.TYPE_UINT8
    outputs = {o.name: o for o in config.output}
    assert list(outputs) == ["labels", "confidence", "logits"]
    assert outputs["labels"].data_type == model_config_pb2.TYPE_UINT8
    assert list(outputs["labels"].dims) == [-1, -1]
    assert outputs["confidence"].data_type == model_config_pb2.TYPE_FP32
    assert list(outputs["logits"].dims) == [4, -1, -1]  # classes are static, batch omitted
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 1


def test_without_logits_and_cpu_group() -> None:
    text = render_config(build_model(logits=False), "plain", kind="KIND_CPU", max_batch_size=4)
    config = _parse(text)
    assert [o.name for o in config.output] == ["labels", "confidence"]
    assert config.max_batch_size == 4
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_bad_names_and_batch_sizes(tmp_path: Path) -> None:
    assert valid_model_name("danet-synthetic") and valid_model_name("a.b_c-1")
    for bad in ("", "../x", "a/b", "-lead", "sp ace"):
        assert not valid_model_name(bad)
    with pytest.raises(ValueError, match="Triton model name"):
        write_triton_model(tmp_path, "a/b", write_model(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="max_batch_size"):
        render_config(build_model(), "m", max_batch_size=0)


def test_export_writes_one_model_per_artifact(tmp_path: Path, tiny_loaded: Any) -> None:
    from export.onnx_export import export_onnx

    report = export_onnx(
        tiny_loaded, tmp_path / "out" / "street.onnx", verify=False, triton_repo=tmp_path / "repo"
    )
    assert [model.name for model in report.triton] == ["street"]
    config = _parse((tmp_path / "repo" / "street" / "config.pbtxt").read_text())
    assert [o.name for o in config.output] == ["labels", "confidence"]
    assert (tmp_path / "repo" / "street" / "1" / "model.onnx").read_bytes() == (
        tmp_path / "out" / "street.onnx"
    ).read_bytes()
