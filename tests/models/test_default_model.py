"""The committed default model: loadable, self-describing, small, and accurate on scenes it never saw.

The held-out scenes here come from a seed that neither training nor the training report used, and
the score is computed with this file's own confusion-matrix code, not the trainer's.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from common.contract import DEFAULT_CHECKPOINT, DEFAULT_MODEL_NAME
from models import synthetic
from models.checkpoints import LoadedCheckpoint, load_checkpoint

REPORT = DEFAULT_CHECKPOINT.with_name(f"{DEFAULT_MODEL_NAME}.report.json")
FRESH_SEED = 20_251_125  # a held-out data set of its own
FRESH_SCENES = 16


@pytest.fixture(scope="module")
def loaded() -> LoadedCheckpoint:
    return load_checkpoint(DEFAULT_CHECKPOINT)


def test_weights_are_committed_small_and_self_describing(loaded: LoadedCheckpoint) -> None:
    assert DEFAULT_CHECKPOINT.stat().st_size < 5 * 1024 * 1024
    config = loaded.config
    assert loaded.source_format == "danet-serve"
    assert config.name == DEFAULT_MODEL_NAME
    assert config.classes == synthetic.CLASSES and config.palette == synthetic.PALETTE
    assert config.num_classes == len(synthetic.CLASSES)
    assert config.preferred_size is not None and min(config.preferred_size) >= 64
    assert not loaded.model.training


def test_report_describes_these_weights(loaded: LoadedCheckpoint) -> None:
    report = json.loads(REPORT.read_text())
    assert report["weights_sha256"] == hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest()
    assert report["model"] == DEFAULT_MODEL_NAME
    assert report["evaluation"]["miou"] >= 0.90 and report["evaluation"]["images"] >= 100


def test_held_out_miou_of_the_committed_weights(loaded: LoadedCheckpoint) -> None:
    config = loaded.config
    assert config.preferred_size is not None
    height, width = config.preferred_size
    k = config.num_classes
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    confusion = np.zeros((k, k), np.int64)
    for start in range(0, FRESH_SCENES, 8):
        scenes = list(
            synthetic.iter_scenes(
                8, seed=FRESH_SEED, stream=synthetic.HELDOUT_STREAM, height=height, width=width, start=start
            )
        )
        images = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            pred = loaded.model((images - mean) / std).argmax(1).numpy()
        truth = np.stack([s[1] for s in scenes])
        np.add.at(confusion, (truth.ravel(), pred.ravel()), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    pixel_accuracy = tp.sum() / confusion.sum()
    per_class = dict(zip(synthetic.CLASSES, np.round(tp / np.maximum(union, 1), 3).tolist(), strict=True))
    assert iou.mean() >= 0.90, per_class
    assert pixel_accuracy >= 0.95, per_class
