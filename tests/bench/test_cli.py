"""danet-bench end to end on the tiny model: floor, HTTP and gRPC through a real server, JSON + table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import build_parser, main


def test_parser_defaults_match_the_issue() -> None:
    args = build_parser().parse_args([])
    assert args.sizes == [(512, 512), (1024, 2048)]
    assert args.concurrency == [1, 4, 16]
    assert args.arch == "default"


def test_parser_rejects_bad_sizes() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--sizes", "512xabc"])


def test_tiny_run_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(
        [
            "--arch",
            "tiny",
            "--sizes",
            "32x48",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--concurrency",
            "1,2",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "bench.md"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny | 32x48 | HTTP POST /segment |" in printed
    document = json.loads(out.read_text())
    rows = {r["path"]: r for r in document["results"] if r["status"] == "ok"}
    assert {"floor", "http", "grpc"} <= set(rows)
    for path in ("http", "grpc"):
        assert rows[path]["latency_ms"]["n"] == 3
        assert rows[path]["ratio_p50_to_floor"] > 0
        assert set(rows[path]["throughput_rps"]) == {"1", "2"}
        assert rows[path]["peak_rss_mb"] > 0
    assert rows["floor"]["ratio_p50_to_floor"] == pytest.approx(1.0)
    statuses = {t["key"]: t["status"] for t in document["targets"]}
    assert statuses["http-p50"] in ("PASS", "MISS")
    assert statuses["ort-vs-eager"] == "N/A"  # the tiny model has no checkpoint
    assert document["machine"]["cores"] >= 1
    assert (tmp_path / "bench.md").read_text() == printed.rstrip("\n") + "\n" or "danet-bench" in (
        tmp_path / "bench.md"
    ).read_text()


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(tmp_path / "nope.onnx"), "--skip-server"]) == 2
    assert "nope.onnx" in capsys.readouterr().err
