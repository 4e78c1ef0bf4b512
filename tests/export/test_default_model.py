"""The committed default ONNX model is what danet-export makes of the committed checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from common.contract import (
    DEFAULT_CHECKPOINT,
    DEFAULT_MODEL_NAME,
    DEFAULT_ONNX,
    INPUT_IMAGE,
    META_MODEL_NAME,
    META_PRECISION,
    META_SOURCE_FORMAT,
    META_SOURCE_SHA256,
    OUTPUT_LABELS,
    OUTPUT_LOGITS,
)
from export.metadata import read_metadata
from export.onnx_export import export_onnx
from models.checkpoints import load_checkpoint
from models.synthetic import HELDOUT_STREAM, generate_scene

SIZES = [(128, 128), (96, 160), (97, 131)]


def _run(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_IMAGE: image[np.newaxis]}), strict=True))


@pytest.fixture(scope="module")
def reexported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert DEFAULT_CHECKPOINT.is_file(), f"the default checkpoint {DEFAULT_CHECKPOINT} is not committed"
    loaded = load_checkpoint(DEFAULT_CHECKPOINT)
    out = tmp_path_factory.mktemp("default") / f"{DEFAULT_MODEL_NAME}.onnx"
    report = export_onnx(loaded, out, logits=True)
    assert report.verification is not None and report.verification.passed
    return out


def test_committed_onnx_describes_the_committed_checkpoint() -> None:
    assert DEFAULT_ONNX.is_file(), f"the default model {DEFAULT_ONNX} is not committed"
    meta = read_metadata(onnx.load(str(DEFAULT_ONNX), load_external_data=False))
    assert meta[META_SOURCE_FORMAT] == "danet-serve"
    assert meta[META_SOURCE_SHA256] == load_checkpoint(DEFAULT_CHECKPOINT).sha256
    assert meta[META_PRECISION] == "fp32"
    assert meta[META_MODEL_NAME] == DEFAULT_MODEL_NAME
    outputs = [o.name for o in onnx.load(str(DEFAULT_ONNX), load_external_data=False).graph.output]
    assert OUTPUT_LOGITS in outputs  # exported with --logits


def test_reexport_gives_the_same_labels(reexported: Path) -> None:
    for index, (height, width) in enumerate(SIZES):
        image, truth = generate_scene(7, height, width, index=index, stream=HELDOUT_STREAM)
        committed, fresh = _run(DEFAULT_ONNX, image), _run(reexported, image)
        np.testing.assert_array_equal(fresh[OUTPUT_LABELS], committed[OUTPUT_LABELS])
        np.testing.assert_allclose(fresh[OUTPUT_LOGITS], committed[OUTPUT_LOGITS], atol=1e-4)
        # and the model is a segmenter, not noise: most pixels get their true class
        accuracy = float((committed[OUTPUT_LABELS][0] == truth).mean())
        assert accuracy > 0.5, f"{height}x{width}: pixel accuracy {accuracy:.2f}"
