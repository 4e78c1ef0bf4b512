"""danet-bench end to end on the tiny model: floor, HTTP and gRPC through a real server, JSON + table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import build_parser, main, plan_from


def test_parser_defaults_match_the_issue() -> None:
    args = build_parser().parse_args([])
    assert args.sizes == [(512, 512), (1024, 2048)]
    assert args.concurrency == [1, 4, 16]
    assert args.arch == "default"


def test_each_run_draws_its_own_path_order_unless_told() -> None:
    drawn = {plan_from(build_parser().parse_args([])).order_seed for _ in range(4)}
    assert len(drawn) > 1  # four draws from 2**31 seeds
    plan = plan_from(build_parser().parse_args(["--order-seed", "7"]))
    assert plan.order_seed == 7 and plan.to_dict()["order_seed"] == 7
    assert plan.seed == 0  # the weights and the image stay the same across runs


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
            "--images",
            "scene,noise",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny | 32x48 | scene | HTTP POST /segment |" in printed
    assert "| tiny | 32x48 | noise | HTTP POST /segment |" in printed
    document = json.loads(out.read_text())
    assert {r["image"] for r in document["results"] if r["status"] == "ok"} == {"scene", "noise"}
    rows = {r["path"]: r for r in document["results"] if r["status"] == "ok" and r["image"] == "noise"}
    assert {"floor", "http", "grpc", "grpc-raw", "kserve"} <= set(rows)
    for path in ("http", "grpc", "grpc-raw", "kserve"):
        assert rows[path]["latency_ms"]["n"] == 3
        assert rows[path]["ratio_p50_to_floor"] > 0
        assert set(rows[path]["throughput_rps"]) == {"1", "2"}
        assert rows[path]["peak_rss_mb"] > 0
    assert rows["floor"]["ratio_p50_to_floor"] == pytest.approx(1.0)
    statuses = {t["key"]: t["status"] for t in document["targets"]}
    assert statuses["http-p50"] in ("PASS", "MISS")
    # the per-image targets (the tiny run's only size stands in for neither 512x512 nor 1024x2048)
    assert not any(key.startswith("kserve-p50") for key in statuses)
    assert statuses["ort-vs-eager"] == "N/A"  # the tiny model has no checkpoint
    assert document["machine"]["cores"] >= 1
    assert (tmp_path / "bench.md").read_text() == printed.rstrip("\n") + "\n" or "danet-bench" in (
        tmp_path / "bench.md"
    ).read_text()


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(tmp_path / "nope.onnx"), "--skip-server"]) == 2
    assert "nope.onnx" in capsys.readouterr().err
