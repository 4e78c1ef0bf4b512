"""Every checkpoint format the loader supports exports and verifies (official, MMSegmentation, native)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from common.contract import META_ARCHITECTURE, META_CLASSES, META_SOURCE_FORMAT, META_SOURCE_SHA256
from export.cli import main
from export.metadata import read_metadata
from export.onnx_export import export_onnx
from models.checkpoints import load_checkpoint
from tests.export.conftest import reference_module


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ref = reference_module()
    folder = tmp_path_factory.mktemp("upstream")
    official = folder / "danet_official.pth.tar"
    torch.save({"state_dict": ref.official_state_dict(50, True, 5, stem_width=8, base=8, seed=1)}, official)
    mmseg = folder / "danet_mmseg.pth"
    meta = {
        "dataset_meta": {"classes": ["a", "b", "c", "d", "e", "f"], "palette": [[i, i, i] for i in range(6)]}
    }
    torch.save(
        {"meta": meta, "state_dict": ref.mmseg_state_dict(18, True, 6, stem_channels=16, base=8, seed=2)},
        mmseg,
    )
    return {"official": official, "mmseg": mmseg}


def test_official_checkpoint_via_cli_with_architecture_flags(
    upstream: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "official.onnx"
    status = main(
        [
            str(upstream["official"]),
            "--output",
            str(out),
            "--output-stride",
            "16",
            "--multi-grid",
            "1,2,4",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads(captured.out)
    (fp32,) = report["artifacts"]
    assert fp32["verification"]["passed"] and fp32["verification"]["agreement"] >= 0.9999
    meta = read_metadata(onnx.load(str(out)))
    assert meta[META_SOURCE_FORMAT] == "official"
    arch = meta[META_ARCHITECTURE]
    assert (arch["depth"], arch["output_stride"], arch["multi_grid"], arch["align_corners"]) == (
        50,
        16,
        [1, 2, 4],
        True,
    )
    assert len(meta[META_CLASSES]) == 5


def test_mmseg_checkpoint_with_embedded_classes(upstream: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_checkpoint(upstream["mmseg"])
    report = export_onnx(loaded, tmp_path / "mmseg.onnx", logits=True)
    assert report.verification is not None and report.verification.passed
    assert report.verification.max_abs_logit_diff <= 1e-3
    meta = read_metadata(onnx.load(str(report.output)))
    assert meta[META_SOURCE_FORMAT] == "mmseg"
    assert meta[META_CLASSES] == ["a", "b", "c", "d", "e", "f"]
    assert meta[META_ARCHITECTURE]["align_corners"] is False
    assert meta[META_SOURCE_SHA256] == loaded.sha256


def test_native_checkpoint(tiny_export: Any) -> None:
    assert tiny_export.source_format == "danet-serve"
    assert tiny_export.verification.passed
