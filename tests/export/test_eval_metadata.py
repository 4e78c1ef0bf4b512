"""Evaluation defaults for the server's tta presets: --eval-base-size / --eval-crop-size, and the official
Cityscapes evaluation's (base 2048, crop 768) for official checkpoints exported with --classes cityscapes."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from common.contract import META_EVAL_BASE_SIZE, META_EVAL_CROP_SIZE
from export.cli import OFFICIAL_CITYSCAPES_EVAL, build_parser, eval_defaults, main
from export.metadata import read_metadata
from server.model import describe_session


@pytest.mark.parametrize(
    "argv, source_format, expected",
    [
        (["--classes", "cityscapes"], "official", OFFICIAL_CITYSCAPES_EVAL),
        (["--classes", "Cityscapes", "--eval-crop-size", "512"], "official", (2048, 512)),
        (["--classes", "cityscapes"], "mmseg", (None, None)),
        (["--classes", "ade20k"], "official", (None, None)),
        (["--eval-base-size", "1024"], "danet-serve", (1024, None)),
    ],
)
def test_eval_defaults(argv: list[str], source_format: str, expected: tuple[int | None, int | None]) -> None:
    args = build_parser().parse_args(["ckpt.pth", *argv])
    assert eval_defaults(args, source_format) == expected


def test_bad_eval_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ckpt.pth", "--eval-crop-size", "4"])
    assert "8 to 8192" in capsys.readouterr().err


def test_export_writes_them_and_the_server_reads_them(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    argv = [str(tiny_checkpoint), "-o", str(out), "--logits", "--no-verify", "--quiet"]
    assert main([*argv, "--eval-base-size", "96", "--eval-crop-size", "48"]) == 0
    metadata = read_metadata(onnx.load(str(out), load_external_data=False))
    assert metadata[META_EVAL_BASE_SIZE] == 96 and metadata[META_EVAL_CROP_SIZE] == 48
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    info = describe_session(session, out, "CPUExecutionProvider")
    assert info.eval_defaults == {"base_size": (96, 96), "crop_size": (48, 48)}
    assert info.align_corners is True  # the tiny config's (official-style) upsampling
