"""--triton-repo: repository layout and a config.pbtxt that Triton's own schema accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from export.triton import render_config, valid_model_name, write_triton_model
from tests.onnx_fixtures import build_model, write_model

# tritonclient registers the `inference.*` protobuf symbols in the default descriptor pool, and so do
# this project's own KServe stubs (imported by the gRPC tests in the same pytest process): Triton's
# schema is therefore applied in a child process, which answers with the parsed config as JSON.
_PARSER = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
config = model_config_pb2.ModelConfig()
text_format.Parse(sys.stdin.read(), config)  # raises on anything Triton's schema does not know
print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))
"""


def _parse(text: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-c", _PARSER], input=text, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout))


def _dims(tensor: dict[str, Any]) -> list[int]:
    return [int(d) for d in tensor["dims"]]  # int64 fields come back as JSON strings


def test_layout_and_config(tmp_path: Path) -> None:
    source = write_model(tmp_path / "src" / "seg.onnx", model_name="seg")
    written = write_triton_model(tmp_path / "repo", "seg", source)
    assert written.config == tmp_path / "repo" / "seg" / "config.pbtxt"
    assert written.model == tmp_path / "repo" / "seg" / "1" / "model.onnx"
    assert written.model.read_bytes() == source.read_bytes()
    config = _parse(written.config.read_text())
    assert config["name"] == "seg"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] > 0
    (image,) = config["input"]
    assert image["name"] == "image" and _dims(image) == [-1, -1, 3]
    assert image["data_type"] == "TYPE_UINT8"
    outputs = {o["name"]: o for o in config["output"]}
    assert list(outputs) == ["labels", "confidence", "logits"]
    assert outputs["labels"]["data_type"] == "TYPE_UINT8"
    assert _dims(outputs["labels"]) == [-1, -1]
    assert outputs["confidence"]["data_type"] == "TYPE_FP32"
    assert _dims(outputs["logits"]) == [4, -1, -1]  # classes are static, batch omitted
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) > 0
    (group,) = config["instance_group"]
    assert group["kind"] == "KIND_GPU" and group["count"] == 1


def test_without_logits_and_cpu_group() -> None:
    text = render_config(build_model(logits=False), "plain", kind="KIND_CPU", max_batch_size=4)
    config = _parse(text)
    assert [o["name"] for o in config["output"]] == ["labels", "confidence"]
    assert config["max_batch_size"] == 4
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


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
    assert [o["name"] for o in config["output"]] == ["labels", "confidence"]
    assert (tmp_path / "repo" / "street" / "1" / "model.onnx").read_bytes() == (
        tmp_path / "out" / "street.onnx"
    ).read_bytes()
