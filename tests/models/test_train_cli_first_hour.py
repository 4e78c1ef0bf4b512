"""What a first danet-train / danet-export run tells the user: formats, defaults, the plan, missing tools."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from models import synthetic, train
from models.data import FolderSource
from models.labels import load_label_set
from tests.models.test_train import tiny

REPO = Path(__file__).resolve().parents[2]


def test_a_plain_json_list_of_classes_is_a_label_set(tmp_path: Path) -> None:
    for name, text in (
        ("names.json", '["sky", "road", "tree"]'),
        ("names.txt", '[\n "sky", "road", "tree"]'),
    ):
        path = tmp_path / name
        path.write_text(text)
        label_set = load_label_set(path)
        assert list(label_set.classes) == ["sky", "road", "tree"] and len(label_set.palette) == 3


def test_help_names_the_default_output_and_the_classes_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(runs/danet-train)" in text
    assert "JSON list of names" in text and "one name per line" in text and "cityscapes" in text


def test_the_plan_is_stated_before_training(tmp_path: Path) -> None:
    data = synthetic.write_dataset(tmp_path / "d", 6, height=32, width=32)
    options = tiny(
        tmp_path / "out", data=data, classes="x", name="six", epochs=16, epoch_size=1280, batch_size=8
    )
    config = train.build_config(
        tiny(tmp_path / "out", epochs=16, epoch_size=1280, batch_size=8)
    )  # the synthetic classes
    source = FolderSource(data, size=(32, 32), num_classes=config.num_classes)
    summary = train.plan_summary(options, config, source, 804_463)
    assert "16 epochs x 1280 images at 32x32" in summary
    assert "6 image/label pairs, each seen ~3413 times" in summary
    assert "0.80 M parameters" in summary and str(options.weights_path) in summary


def test_weights_are_readable_by_others(tmp_path: Path) -> None:
    options = tiny(tmp_path, epochs=1, eval_count=1, monitor_count=0)
    train.train(options)
    assert stat.S_IMODE(options.weights_path.stat().st_mode) == 0o644


def _without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where ``module`` cannot be imported (as after `make run`)."""
    prelude = f"import sys; sys.modules[{module!r}] = None; "
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_danet_train_without_torch_says_make_tools() -> None:
    run = _without("torch", "sys.argv = ['danet-train', '--help']; from models.train import main; main()")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "danet-train needs PyTorch, which `make run` does not install: run `make tools`, "
        "then call .venv/bin/danet-train (or activate .venv first)"
    ]


def test_importing_the_trainer_without_torch_stays_an_import_error() -> None:
    run = _without("torch", "sys.argv = ['python']; import models.train")
    assert run.returncode == 1 and "ModuleNotFoundError" in run.stderr


def test_danet_export_without_onnx_says_make_tools(tmp_path: Path) -> None:
    weights = REPO / "models" / "weights" / "danet-synthetic.safetensors"
    code = f"from export.cli import main; sys.exit(main([{str(weights)!r}, '--output', {str(tmp_path / 'm.onnx')!r}]))"
    run = _without("onnx", code)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "onnx is not installed" in run.stderr and "make tools" in run.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_the_documented_classes_file_trains(tmp_path: Path) -> None:
    data = synthetic.write_dataset(tmp_path / "d", 2, height=32, width=32)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(list(synthetic.CLASSES)))
    options = tiny(tmp_path / "out", data=data, classes=str(classes), name="listed", epochs=1, eval_count=1)
    train.train(options)
    assert options.weights_path.is_file()
