"""danet-train on tiny inputs: a loadable checkpoint, exact resume, folder data sets, metrics, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models import synthetic, train
from models.checkpoints import load_checkpoint
from models.data import DatasetError, FolderSource, augment
from models.train import TrainOptions, main, metrics_from_confusion


def tiny(output: Path, **changes: Any) -> TrainOptions:
    """A run of 2 epochs x 2 steps of 2 scenes at 32x32 on one thread."""
    base = TrainOptions(
        output=output,
        size=(32, 32),
        epochs=2,
        epoch_size=4,
        batch_size=2,
        warmup_steps=1,
        eval_count=2,
        monitor_count=1,
        threads=1,
        progress=False,
    )
    return replace(base, **changes)


def test_tiny_run_writes_a_loadable_checkpoint_and_report(tmp_path: Path) -> None:
    options = tiny(tmp_path)
    report = train.train(options)
    loaded = load_checkpoint(options.weights_path)
    assert loaded.source_format == "danet-serve"
    assert loaded.config.name == "danet-synthetic"
    assert loaded.config.classes == synthetic.CLASSES and loaded.config.palette == synthetic.PALETTE
    assert loaded.config.preferred_size == (32, 32)
    on_disk = json.loads(options.report_path.read_text())
    assert on_disk["weights_sha256"] == loaded.sha256 == report["weights_sha256"]
    evaluation = on_disk["evaluation"]
    assert 0.0 <= evaluation["miou"] <= 1.0 and evaluation["images"] == 2
    assert [h["epoch"] for h in on_disk["training"]["history"]] == [1, 2]
    assert not options.state_path.exists()  # removed once the weights are written
    # The weights in the file are the trained ones, not a fresh initialisation.
    torch.manual_seed(options.seed)
    fresh = train.build_danet(loaded.config).state_dict()
    saved = load_file(str(options.weights_path))
    assert any(not torch.equal(saved[k], fresh[k]) for k in fresh)


def test_interrupted_run_resumes_to_identical_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = tiny(tmp_path / "straight")
    train.train(straight)

    interrupted = tiny(tmp_path / "resumed")
    real_save = train.save_state

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(train, "save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train.train(interrupted)
    monkeypatch.setattr(train, "save_state", real_save)
    assert torch.load(interrupted.state_path, weights_only=True)["epoch"] == 1

    report = train.train(replace(interrupted, resume=True))
    assert [h["epoch"] for h in report["training"]["history"]] == [1, 2]
    a, b = load_file(str(straight.weights_path)), load_file(str(interrupted.weights_path))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_resume_refuses_missing_state_and_changed_options(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train.train(tiny(tmp_path, resume=True))
    train.train(tiny(tmp_path, keep_checkpoint=True))
    with pytest.raises(ValueError, match="lr"):
        train.train(tiny(tmp_path, resume=True, lr=0.5))


def test_training_on_a_folder_data_set(tmp_path: Path) -> None:
    data = synthetic.write_dataset(tmp_path / "train", 4, seed=0, height=40, width=48)
    val = synthetic.write_dataset(tmp_path / "val", 2, seed=9, height=36, width=36)
    classes = tmp_path / "scenes.json"
    classes.write_text(json.dumps({"classes": list(synthetic.CLASSES), "palette": synthetic.PALETTE}))
    options = tiny(tmp_path / "out", data=data, val_data=val, classes=str(classes), name="scenes")
    report = train.train(options)
    loaded = load_checkpoint(tmp_path / "out" / "scenes.safetensors")
    assert loaded.config.classes == synthetic.CLASSES
    assert report["data"]["kind"] == "folder" and report["data"]["images"] == 4
    assert report["evaluation"]["images"] == 2 and "validation folder" in report["evaluation"]["split"]


def test_folder_labels_outside_the_class_list_are_reported(tmp_path: Path) -> None:
    data = synthetic.write_dataset(tmp_path / "train", 2, height=32, width=32)
    source = FolderSource(data, size=(32, 32), num_classes=3)
    with pytest.raises(DatasetError, match=r"outside 0\.\.2"):
        source.batch(0, 0, 2)


def test_folder_without_labels_is_reported(tmp_path: Path) -> None:
    data = synthetic.write_dataset(tmp_path / "train", 2, height=32, width=32)
    (data / "labels" / "000001.png").unlink()
    with pytest.raises(DatasetError, match="000001.png"):
        FolderSource(data, size=(32, 32), num_classes=7)


def test_augment_pads_small_images_with_the_ignore_index() -> None:
    image = np.full((10, 12, 3), 7, np.uint8)
    label = np.ones((10, 12), np.uint8)
    rng = np.random.default_rng(0)
    out_image, out_label = augment(image, label, (64, 80), rng, scale_range=(0.5, 0.5))
    assert out_image.shape == (64, 80, 3) and out_label.shape == (64, 80)
    assert set(np.unique(out_label)) == {1, 255}
    assert (out_image[out_label == 255] == 0).all()


def test_metrics_from_a_known_confusion_matrix() -> None:
    # rows = truth. class 0: tp 8, fn 2, fp 1 -> 8/11; class 1: tp 5, fn 1, fp 2 -> 5/8; class 2 absent.
    confusion = np.array([[8, 2, 0], [1, 5, 0], [0, 0, 0]])
    metrics = metrics_from_confusion(confusion, ["a", "b", "c"])
    assert metrics["miou"] == pytest.approx((8 / 11 + 5 / 8) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(13 / 16)
    assert metrics["per_class_iou"]["c"] is None


def test_confusion_matrix_skips_ignored_pixels() -> None:
    target = np.array([[0, 1, 255], [2, 2, 1]])
    pred = np.array([[0, 2, 1], [2, 0, 1]])
    confusion = train.confusion_matrix(pred, target, 3)
    assert confusion.sum() == 5 and confusion[2, 2] == 1 and confusion[1, 2] == 1 and confusion[2, 0] == 1


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    assert train.learning_rate(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert train.learning_rate(9, 100, 1.0, 10) == pytest.approx(0.91**0.9)
    assert train.learning_rate(50, 100, 1.0, 10) == pytest.approx(0.5**0.9)
    assert train.learning_rate(100, 100, 1.0, 10) == 0.0


def test_cli_trains_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--output",
        str(tmp_path),
        "--size",
        "32",
        "--epochs",
        "1",
        "--epoch-size",
        "2",
        "--batch-size",
        "2",
    ]
    argv += ["--eval-count", "1", "--monitor-count", "0", "--threads", "1", "--no-progress", "--name", "tiny"]
    assert main(argv) == 0
    assert "mIoU" in capsys.readouterr().out
    assert (tmp_path / "tiny.safetensors").is_file() and (tmp_path / "tiny.report.json").is_file()


def test_cli_needs_classes_for_a_folder(tmp_path: Path) -> None:
    data = synthetic.write_dataset(tmp_path / "d", 1, height=32, width=32)
    assert main(["--data", str(data), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        main(["--classes", "cityscapes", "--output", str(tmp_path)])  # --classes without --data
