"""The unmodified tritonclient.grpc against danet-serve (a subprocess), compared with onnxruntime.

tritonclient registers `inference.*` in protobuf's default pool, so it runs in its own process too
(triton_probe.py); this process only reads what it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pb2

from protos.gen.inference import grpc_service_pb2, model_config_pb2
from tests.conftest import server_process
from tests.onnx_fixtures import write_model

MODEL = "tiny"
PROBE = Path(__file__).with_name("triton_probe.py")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, np.ndarray]]:
    work = tmp_path_factory.mktemp("triton")
    model = write_model(work / "tiny.onnx", model_name=MODEL)
    images = np.random.default_rng(11).integers(0, 256, size=(2, 24, 40, 3), dtype=np.uint8)
    np.save(work / "images.npy", images)
    server = server_process([model], log_format="text").start()
    try:
        run = subprocess.run(
            [sys.executable, str(PROBE), server.grpc_target, MODEL, str(work / "images.npy"), str(work)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, f"probe failed:\n{run.stdout}\n{run.stderr}\nserver log:\n{server.log()}"
    finally:
        server.stop()
    yield work, model, images


@pytest.fixture(scope="module")
def report(probe: tuple[Path, Path, np.ndarray]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((probe[0] / "report.json").read_text())
    return result


def test_labels_equal_a_direct_onnxruntime_run(probe: tuple[Path, Path, np.ndarray]) -> None:
    work, model, images = probe
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels, confidence, logits = session.run(["labels", "confidence", "logits"], {"image": images})
    got = np.load(work / "outputs.npz")
    assert got["labels"].dtype == np.uint8 and got["labels"].shape == (2, 24, 40)
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_array_equal(got["chosen_labels"], labels)
    np.testing.assert_allclose(got["confidence"], confidence, rtol=1e-6)
    np.testing.assert_allclose(got["logits"], logits, rtol=1e-6)


def test_outputs_follow_the_request_and_default_to_all(report: dict[str, Any]) -> None:
    assert report["all_outputs"] == ["labels", "confidence", "logits"]
    assert report["chosen_outputs"] == ["confidence", "labels"]
    assert report["chosen_id"] == "req-7"


def test_health_and_metadata(report: dict[str, Any]) -> None:
    assert report["live"] is True and report["ready"] is True
    assert report["model_ready"] is True and report["unknown_model_ready"] is False
    assert report["server_metadata"]["name"] == "danet-serve"
    meta = report["model_metadata"]
    assert meta["name"] == MODEL and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": ["-1", "-1", "-1", "3"]}]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "confidence", "logits"]
    config = report["model_config"]["config"]
    assert config["name"] == MODEL
    assert config["input"][0]["data_type"] == "TYPE_UINT8" and config["input"][0]["dims"] == ["-1", "-1", "3"]


def test_errors_carry_grpc_status_codes(report: dict[str, Any]) -> None:
    assert report["errors"] == {
        "unknown_model": "StatusCode.NOT_FOUND",
        "wrong_datatype": "StatusCode.INVALID_ARGUMENT",
        "unknown_output": "StatusCode.INVALID_ARGUMENT",
    }


def test_stream_replies_carry_request_ids(report: dict[str, Any]) -> None:
    assert report["stream"] == [{"error": None, "id": f"s{i}"} for i in range(3)]


def _fields(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, dict[str, tuple[Any, ...]]]:
    """message full name -> field name -> (number, type, label, type name, oneof index)."""
    table: dict[str, dict[str, tuple[Any, ...]]] = {}

    def visit(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        table[name] = {
            f.name: (
                f.number,
                f.type,
                f.label,
                f.type_name,
                f.oneof_index if f.HasField("oneof_index") else None,
            )
            for f in message.field
        }
        for nested in message.nested_type:
            visit(name, nested)

    for file in files:
        for message in file.message_type:
            visit(file.package, message)
    return table


def test_every_field_we_declare_matches_tritonclient(probe: tuple[Path, Path, np.ndarray]) -> None:
    work = probe[0]
    theirs = _fields(
        [
            descriptor_pb2.FileDescriptorProto.FromString((work / name).read_bytes())
            for name in ("service.desc", "model_config.desc")
        ]
    )
    ours_files = []
    for module in (grpc_service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        ours_files.append(proto)
    ours = _fields(ours_files)
    assert len(ours) > 20
    for message, fields in ours.items():
        assert message in theirs, f"{message} is not part of the protocol"
        for field, spec in fields.items():
            assert theirs[message].get(field) == spec, (
                f"{message}.{field}: ours {spec}, protocol {theirs[message].get(field)}"
            )
