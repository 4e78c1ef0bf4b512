"""danet-export: progress + summary on success, one clean paragraph and a non-zero status on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from common.contract import META_CLASSES, META_MODEL_NAME, META_PALETTE, META_PREFERRED_SIZE
from export.cli import EXIT_INPUT, EXIT_VERIFICATION, main
from export.metadata import read_metadata


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _assert_clean_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no error message"
    assert lines[-1].startswith("danet-export: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"


def test_success_prints_progress_and_summary(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nested" / "street.onnx"
    names = tmp_path / "names.json"
    names.write_text(
        json.dumps({"classes": [f"c{i}" for i in range(7)], "palette": [[i, 2 * i, 3 * i] for i in range(7)]})
    )
    status, stdout, stderr = _run(
        capsys,
        *(str(tiny_checkpoint), "--output", str(out), "--logits", "--name", "street"),
        *("--classes", str(names), "--preferred-size", "64x96"),
    )
    assert status == 0, stderr
    assert out.is_file()
    meta = read_metadata(onnx.load(str(out)))
    assert meta[META_CLASSES] == [f"c{i}" for i in range(7)] and meta[META_PALETTE][3] == [3, 6, 9]
    assert meta[META_PREFERRED_SIZE] == [64, 96] and meta[META_MODEL_NAME] == "street"
    assert "[1/3] Tracing the fp32 graph" in stderr and "[3/3] Verifying fp32 against PyTorch" in stderr
    assert "Exported 'street' from a danet-serve checkpoint" in stdout
    assert "fp32 ONNX vs PyTorch" in stdout and "argmax agreement 100.0000%" in stdout
    assert "outputs: labels, confidence, logits" in stdout


def test_verification_failure_exits_1_and_leaves_nothing(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "strict.onnx"
    status, _, stderr = _run(capsys, str(tiny_checkpoint), "--output", str(out), "--atol", "1e-12", "--quiet")
    assert status == EXIT_VERIFICATION
    _assert_clean_error(stderr, "verification failed", "FAILED", "--no-verify")
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(capsys, str(tmp_path / "nope.pth"), "--output", str(tmp_path / "x.onnx"))
    assert status == EXIT_INPUT
    _assert_clean_error(err, "nope.pth", "no such file")


def test_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.pth"
    bogus.write_text("these are my notes, not weights\n")
    status, _, err = _run(capsys, str(bogus), "--output", str(tmp_path / "x.onnx"))
    assert status == EXIT_INPUT
    _assert_clean_error(err, "notes.pth")


def test_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(3, 4), "conv1.weight": torch.zeros(4, 3, 3, 3)}, other)
    status, _, err = _run(capsys, str(other), "--output", str(tmp_path / "x.onnx"))
    assert status == EXIT_INPUT
    _assert_clean_error(err, "resnet.pth", "unknown", "neither")


def test_classes_size_mismatch(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(
        capsys, str(tiny_checkpoint), "--classes", "cityscapes", "--output", str(tmp_path / "x.onnx")
    )
    assert status == EXIT_INPUT
    _assert_clean_error(err, "19 classes", "7")
    names = tmp_path / "names.txt"
    names.write_text("road\nsky\n")
    status, _, err = _run(
        capsys, str(tiny_checkpoint), "--classes", str(names), "--output", str(tmp_path / "x.onnx")
    )
    assert status == EXIT_INPUT
    _assert_clean_error(err, "2 classes")


def test_unwritable_output(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a directory should be")
    status, _, err = _run(capsys, str(tiny_checkpoint), "--output", str(blocker / "model.onnx"))
    assert status == EXIT_INPUT
    _assert_clean_error(err, "Cannot write", "model.onnx")
    status, _, err = _run(capsys, str(tiny_checkpoint), "--output", str(tmp_path))
    assert status == EXIT_INPUT
    _assert_clean_error(err, "is a directory")


def test_bad_option_values_are_usage_errors(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["--multi-grid", "4,x,16"], ["--output-stride", "32"], ["--preferred-size", "big"]):
        with pytest.raises(SystemExit) as caught:
            main([str(tiny_checkpoint), *argv])
        assert caught.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_bad_opset_and_calibration_dir(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(capsys, str(tiny_checkpoint), "--output", str(tmp_path / "a.onnx"), "--opset", "9")
    assert status == EXIT_INPUT
    _assert_clean_error(err, "--opset")
    missing = tmp_path / "no-images"
    status, _, err = _run(
        capsys,
        str(tiny_checkpoint),
        "--output",
        str(tmp_path / "a.onnx"),
        "--int8",
        "--calibration",
        str(missing),
    )
    assert status == EXIT_INPUT
    _assert_clean_error(err, "calibration", "no-images")


def test_console_script_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "export.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0
    for flag in (
        "--logits",
        "--output-stride",
        "--multi-grid",
        "--classes",
        "--fp16",
        "--int8",
        "--verify",
        "--triton-repo",
    ):
        assert flag in completed.stdout
