"""export.memcheck: the full-resolution memory benchmark (slow) and its measuring child (fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from export.memcheck import main, measure


def test_child_reports_peak_rss_and_outputs(tiny_export: Any) -> None:
    result = measure(Path(tiny_export.output), 72, 104, threads=1, arena=False, pattern=True)
    assert result["outputs"] == {"labels": [1, 72, 104], "confidence": [1, 72, 104]}
    assert 0 < result["baseline_rss_mb"] <= result["after_load_rss_mb"] <= result["peak_rss_mb"]
    assert result["arena"] is False and result["run_s"] >= 0


@pytest.mark.slow
def test_resnet50_os8_full_resolution_fits_in_1_2_gb() -> None:
    """DANet-ResNet50-OS8 at 1024x2048 in one pass, <= 1.2 GB peak RSS (about a minute of CPU)."""
    assert main(["--settings", "no-arena", "--budget-mb", "1200"]) == 0


def test_server_mode_reports_the_server_process_peak(tiny_export: Any) -> None:
    from export.memcheck import measure_server

    result = measure_server(Path(tiny_export.output), 64, 96, requests=2)
    assert [item["format"] for item in result["requests"]] == ["color", "index"]
    assert all(item["status"] == 200 for item in result["requests"])
    assert 0 < result["ready"]["VmHWM"] <= result["peak_rss_mb"]
