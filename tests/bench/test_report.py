"""Ratios and targets from hand-made rows: misses must be reported as MISS with the measured figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.report import Row
from bench.stats import LatencyStats


def _lat(ms: float) -> LatencyStats:
    return LatencyStats.from_seconds([ms / 1000.0] * 5)


def _rows() -> list[Row]:
    size = (512, 512)
    return [
        Row(
            "m",
            size,
            report.FLOOR,
            latency=_lat(100.0),
            throughput={1: 10.0, 4: 9.0},
            peak_rss_bytes=500_000_000,
        ),
        Row("m", size, report.HTTP, latency=_lat(108.0), throughput={1: 9.0, 4: 9.8}),
        Row("m", size, report.GRPC, latency=_lat(106.0), throughput={1: 9.4, 4: 9.0}),
        Row("m", size, report.EAGER, latency=_lat(140.0), throughput={1: 7.0}),
        Row(
            "m",
            size,
            "floor-int8",
            precision="int8",
            latency=_lat(40.0),
            throughput={1: 25.0},
            agreement=0.995,
        ),
        Row("m", size, "floor-fp16", precision="fp16", status="skipped", note="fp16 export failed: boom"),
        Row(
            "m",
            (1024, 2048),
            report.FLOOR,
            latency=_lat(900.0),
            throughput={1: 1.1},
            peak_rss_bytes=1_300_000_000,
        ),
        Row(
            "m",
            (1024, 2048),
            report.HTTP,
            latency=_lat(950.0),
            throughput={1: 1.0},
            peak_rss_bytes=1_100_000_000,
        ),
    ]


def _by_key(targets: list[report.Target]) -> dict[str, report.Target]:
    return {t.key: t for t in targets}


def test_ratios_against_the_floor_of_the_same_size() -> None:
    rows = _rows()
    report.compute_ratios(rows)
    http = rows[1]
    assert http.ratio_p50 == pytest.approx(1.08)
    assert http.ratio_throughput[4] == pytest.approx(9.8 / 10.0)  # best floor throughput is 10/s (c=1)
    assert rows[7].ratio_p50 == pytest.approx(950.0 / 900.0)
    assert rows[5].ratio_p50 is None  # skipped rows get no ratio


def test_targets_pass_and_miss() -> None:
    rows = _rows()
    report.compute_ratios(rows)
    targets = _by_key(report.evaluate_targets(rows))
    assert targets["http-p50"].status == "PASS"  # 1.08 <= 1.10
    assert targets["grpc-p50"].status == "MISS"  # 1.06 > 1.05
    assert "1.060x" in targets["grpc-p50"].measured
    assert targets["ort-vs-eager"].status == "MISS"  # 1.4 < 1.5
    assert targets["int8"].status == "PASS"  # 2.5x, 99.5 %
    assert targets["http-c4"].status == "PASS"  # 0.98
    assert targets["grpc-c4"].status == "MISS"  # 0.90
    assert targets["rss-large-floor"].status == "MISS"  # 1300 MB
    assert targets["rss-large-http"].status == "PASS"  # 1100 MB


def test_int8_agreement_below_99_percent_is_a_miss() -> None:
    rows = _rows()
    rows[4].agreement = 0.98
    report.compute_ratios(rows)
    assert _by_key(report.evaluate_targets(rows))["int8"].status == "MISS"


def test_unmeasured_targets_are_not_applicable_with_the_reason() -> None:
    rows = [r for r in _rows() if r.path in (report.FLOOR,) and r.size == (512, 512)]
    rows.append(Row("m", (512, 512), report.EAGER, status="skipped", note="torch not installed"))
    report.compute_ratios(rows)
    targets = _by_key(report.evaluate_targets(rows))
    assert targets["http-p50"].status == "N/A"
    assert targets["ort-vs-eager"].status == "N/A"
    assert "torch not installed" in targets["ort-vs-eager"].note


def test_markdown_and_json_show_everything(tmp_path: Path) -> None:
    rows = _rows()
    rows[1].samples = {"calls": [{"round": 0, "slot": 2, "ms": 108.0}], "bursts": []}
    report.compute_ratios(rows)
    targets = report.evaluate_targets(rows)
    text = report.markdown(
        rows, targets, {"cpu": "test cpu", "cores": 2}, {"concurrency": [1, 4], "threads": 2}
    )
    assert "test cpu" in text
    assert "**MISS**" in text and "**PASS**" in text
    assert "fp16 export failed: boom" in text  # skipped rows are listed with the reason
    assert "1.080x" in text
    path = tmp_path / "out.json"
    report.write_json(path, report.to_json(rows, targets, {"cpu": "x"}, {"threads": 2}, [{"name": "m"}]))
    document = json.loads(path.read_text())
    assert len(document["results"]) == len(rows)
    assert {t["status"] for t in document["targets"]} >= {"PASS", "MISS"}
    assert document["results"][1]["ratio_p50_to_floor"] == pytest.approx(1.08)
    assert document["results"][1]["samples"]["calls"] == [{"round": 0, "slot": 2, "ms": 108.0}]


def test_overhead_targets_per_test_image() -> None:
    size, large = (512, 512), (1024, 2048)
    rows = []
    for image, http_ms in (("scene", 104.0), ("noise", 112.0)):
        rows += [
            Row("m", size, report.FLOOR, latency=_lat(100.0), throughput={1: 10.0}, image=image),
            Row("m", size, report.HTTP, latency=_lat(http_ms), throughput={1: 9.0, 4: 9.6}, image=image),
            Row("m", size, report.GRPC_RAW, latency=_lat(102.0), image=image),
            Row("m", large, report.FLOOR, latency=_lat(1000.0), image=image),
            Row("m", large, report.KSERVE, latency=_lat(1040.0), image=image),
        ]
    report.compute_ratios(rows)
    assert rows[1].ratio_p50 == pytest.approx(1.04) and rows[6].ratio_p50 == pytest.approx(1.12)
    targets = _by_key(report.overhead_targets(rows, "m"))
    assert targets["http-p50-512x512-scene"].status == "PASS"  # 1.04 <= 1.05
    assert targets["http-p50-512x512-noise"].status == "MISS"  # 1.12
    assert targets["grpc-raw-p50-512x512-scene"].status == "PASS"  # 1.02 <= 1.03
    assert targets["kserve-p50-512x512-scene"].status == "N/A"
    assert targets["kserve-p50-1024x2048-noise"].status == "MISS"  # 1.04 > 1.03
    assert targets["http-c4-scene"].status == "PASS"  # 0.96


def test_paired_ratio_is_the_median_of_same_round_ratios() -> None:
    # the machine slows down in round 2 for everyone: pairs cancel it
    assert report.paired_ratio([1.1, 2.2, 1.0], [1.0, 2.0, 1.0]) == pytest.approx(1.1)
    assert report.paired_ratio([1.0, 3.0], [1.0, 2.0]) == pytest.approx(1.25)
    assert report.paired_ratio([1.0], [1.0, 2.0]) is None  # a path that dropped out has no pairs
    assert report.paired_ratio([], []) is None
