"""The committed stubs are what `python -m protos.generate` produces, and they import without sys.path hacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from protos.generate import DEFAULT_OUT, generate

# Lines that only record which protoc / grpcio-tools made the file.
_VERSION_STAMPS = re.compile(
    r"^# Protobuf Python Version: .*$|^GRPC_GENERATED_VERSION = .*$|"
    r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)$",
    re.M,
)


def normalised(path: Path) -> str:
    return _VERSION_STAMPS.sub("<version>", path.read_text(encoding="utf-8"))


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    generate(fresh)
    committed = {
        p.relative_to(DEFAULT_OUT)
        for p in DEFAULT_OUT.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    regenerated = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
    assert committed == regenerated, "run `python -m protos.generate` and commit protos/gen"
    stale = [str(p) for p in sorted(committed) if normalised(DEFAULT_OUT / p) != normalised(fresh / p)]
    assert not stale, f"stale generated stubs {stale}: run `python -m protos.generate` and commit protos/gen"


def test_stubs_import_from_any_directory(tmp_path: Path) -> None:
    code = (
        "from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as s\n"
        "from protos.gen.inference import grpc_service_pb2_grpc as k\n"
        "import server.grpc.server, client\n"
        "print(s.SegmentationServiceStub.__name__, k.GRPCInferenceServiceStub.__name__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": ""},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["SegmentationServiceStub", "GRPCInferenceServiceStub"]
