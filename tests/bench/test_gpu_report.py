"""bench/gpu_report.py on the CPU: the budget guard, the partial JSON, the TensorRT cache options and the
model names (the measurements themselves need a GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_report
from bench.floor import make_session
from bench.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("gpu-report") / "tiny.onnx", layers=1, channels=4)


@pytest.fixture
def tiny_models(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """``prepare`` replaced by the tiny model as both precisions; records what it was asked for."""
    calls: list[list[str]] = []

    def fake_prepare(
        work_dir: Path, names: list[str], attention: tuple[str, ...]
    ) -> dict[str, dict[str, Path]]:
        calls.append(names)
        return {name: {"fp32": tiny, "fp16": tiny} for name in names}

    monkeypatch.setattr(gpu_report, "prepare", fake_prepare)
    return calls


def test_budget_is_spent_only_after_its_seconds() -> None:
    now = [100.0]
    budget = gpu_report.Budget(10.0, clock=lambda: now[0])
    assert not budget.spent()
    now[0] = 109.9
    assert not budget.spent() and budget.elapsed() == pytest.approx(9.9)
    now[0] = 110.0
    assert budget.spent()
    unlimited = gpu_report.Budget(0.0, clock=lambda: now[0])
    now[0] = 1e9
    assert not unlimited.spent()


def test_tensorrt_gets_engine_and_timing_caches(tmp_path: Path) -> None:
    names = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert gpu_report.provider_specs(names, None) == names
    cache = tmp_path / "trt"
    specs = gpu_report.provider_specs(names, cache)
    assert cache.is_dir()
    assert specs[1:] == names[1:]
    assert isinstance(specs[0], tuple)
    name, options = specs[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)


def test_a_provider_with_options_that_this_build_lacks_falls_back_to_the_cpu(tiny: Path) -> None:
    specs = gpu_report.provider_specs(["TensorrtExecutionProvider"], Path("/nonexistent-not-created"))
    assert isinstance(specs[0], tuple)
    session = make_session(tiny, specs, threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_full_run_writes_every_row(tiny_models: list[list[str]], tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    argv = ["--providers", "CPUExecutionProvider", "--iterations", "3", "--batches", "1,2"]
    argv += ["--full-size", "32x48", "--models", "danet-synthetic", "--json", str(out)]
    assert gpu_report.main(argv) == 0
    assert tiny_models == [["danet-synthetic"]]
    result = json.loads(out.read_text())
    assert result["last_stage"] == "done" and "stopped" not in result
    entry = result["models"]["danet-synthetic"]
    rows = [(r["precision"], r["batch"], r["size"]) for r in entry["latency"]]
    assert rows == [
        (p, b, s) for p in ("fp32", "fp16") for b, s in ((1, "512x512"), (2, "512x512"), (1, "32x48"))
    ]
    assert all(r["provider"] == "CPUExecutionProvider" and r["p50_ms"] > 0 for r in entry["latency"])
    assert entry["fp16_vs_fp32_512"]["label_agreement"] == 1.0  # the same file twice
    assert {"memory_32x48_fp32", "memory_32x48_fp16"} <= set(entry)


def test_a_spent_budget_stops_before_the_next_measurement_and_says_where(
    tiny_models: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = {"n": 0}

    class CountingBudget(gpu_report.Budget):
        """Spent from the fourth check on: agreement and two latency rows get measured."""

        def spent(self) -> bool:
            checks["n"] += 1
            return checks["n"] > 3

    monkeypatch.setattr(gpu_report, "Budget", CountingBudget)
    out = tmp_path / "gpu.json"
    argv = [
        "--providers",
        "CPUExecutionProvider",
        "--iterations",
        "3",
        "--batches",
        "1,2",
        "--budget-s",
        "60",
    ]
    argv += ["--full-size", "32x48", "--models", "danet-r50-os8", "--json", str(out)]
    assert gpu_report.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["stopped"] == "budget of 60 s spent before danet-r50-os8 fp32 batch 1 32x48"
    assert [r["batch"] for r in result["models"]["danet-r50-os8"]["latency"]] == [1, 2]
    assert result["last_stage"] == "danet-r50-os8 fp32 batch 1 32x48"


def test_unknown_model_names_are_refused_before_any_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_report.main(["--models", "danet-r18-os8", "--work-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown model(s) ['danet-r18-os8']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
