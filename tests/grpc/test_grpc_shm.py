"""Statistics and system shared memory through the unmodified tritonclient (REST and gRPC) against a
danet-serve process that requires an API key; labels read from shared memory equal a direct onnxruntime run.

tritonclient registers `inference.*` in protobuf's default pool, so it runs in its own process
(triton_extensions_probe.py); this process reads what it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import server_process
from tests.onnx_fixtures import write_model

MODEL = "tiny"
KEY = "probe-key"
PROBE = Path(__file__).with_name("triton_extensions_probe.py")
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, np.ndarray, str]]:
    work = tmp_path_factory.mktemp("extensions")
    model = write_model(work / "tiny.onnx", model_name=MODEL)
    images = np.random.default_rng(5).integers(0, 256, size=(2, 24, 40, 3), dtype=np.uint8)
    np.save(work / "images.npy", images)
    server = server_process([model], log_format="text", env={"DANET_API_KEY": KEY}).start()
    try:
        http = server.http_url.removeprefix("http://")
        run = subprocess.run(
            [
                sys.executable,
                str(PROBE),
                http,
                server.grpc_target,
                MODEL,
                str(work / "images.npy"),
                str(work),
                KEY,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, f"probe failed:\n{run.stdout}\n{run.stderr}\nserver log:\n{server.log()}"
        maps = Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.stop()
    yield work, model, images, maps


@pytest.fixture(scope="module")
def report(probe: tuple[Path, Path, np.ndarray, str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((probe[0] / "report.json").read_text())
    return result


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_labels_from_shared_memory_equal_onnxruntime(
    probe: tuple[Path, Path, np.ndarray, str], report: dict[str, Any], protocol: str
) -> None:
    work, model, images, _ = probe
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels, confidence = session.run(["labels", "confidence"], {"image": images})
    np.testing.assert_array_equal(np.load(work / f"labels_{protocol}.npy"), labels)
    np.testing.assert_allclose(np.load(work / f"confidence_{protocol}.npy"), confidence, rtol=1e-6)
    assert report[protocol]["labels_in_reply"] is None  # written to the region, not sent back
    output = report[protocol]["labels_output"]
    assert output["shape"] in ([2, 24, 40], ["2", "24", "40"]) and output["datatype"] == "UINT8"
    parameters = output["parameters"]
    assert parameters["shared_memory_region"] in ("out", {"string_param": "out"})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_extensions_listed(report: dict[str, Any], protocol: str) -> None:
    assert {"statistics", "system_shared_memory"} <= set(report[protocol]["extensions"])


def _regions(status: Any, protocol: str) -> dict[str, dict[str, Any]]:
    """REST: a list of regions; gRPC (as JSON): {"regions": {name: {...}}}; both -> name -> status."""
    rows = status if protocol == "http" else list(status.get("regions", {}).values())
    # proto3 JSON leaves out zeros (offset 0)
    return {
        r["name"]: {"key": r["key"], "offset": int(r.get("offset", 0)), "byte_size": int(r["byte_size"])}
        for r in rows
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_register_status_unregister(report: dict[str, Any], protocol: str) -> None:
    r = report[protocol]
    every = _regions(r["status_all"], protocol)
    assert set(every) == {"in", "out"}
    assert every["in"]["byte_size"] == 2 * 24 * 40 * 3 and every["in"]["offset"] == 0
    assert every["in"]["key"].endswith(f"_{protocol}_in")
    assert set(_regions(r["status_one"], protocol)) == {"out"}
    assert set(_regions(r["status_after_one"], protocol)) == {"out"}
    assert _regions(r["status_after_all"], protocol) == {}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_regions_and_bounds_are_refused(report: dict[str, Any], protocol: str) -> None:
    r = report[protocol]
    bad = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    for case in (
        "register_twice",
        "register_beyond_object",
        "register_missing_key",
        "status_unknown",
        "input_beyond_region",
        "output_too_small",
        "unknown_region",
    ):
        assert r[case] is not None and r[case].startswith(bad), (case, r[case])
    assert "beyond" in r["input_beyond_region"] and "beyond" in r["register_beyond_object"]
    assert "already registered" in r["register_twice"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_calls_need_the_key(report: dict[str, Any], protocol: str) -> None:
    refused = report[protocol]["unauthenticated_register"]
    assert refused is not None
    assert refused.startswith("401" if protocol == "http" else "StatusCode.UNAUTHENTICATED")


def test_regions_unmapped_after_unregister(probe: tuple[Path, Path, np.ndarray, str]) -> None:
    maps = probe[3]
    assert "danet_probe_" not in maps


def _model_stats(stats: Any) -> list[dict[str, Any]]:
    return list(stats.get("model_stats", []))


def _count(entry: dict[str, Any], *path: str) -> int:
    value: Any = entry
    for key in path:
        value = value.get(key, 0) if isinstance(value, dict) else 0
    return int(value or 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_statistics_through_tritonclient(report: dict[str, Any], protocol: str) -> None:
    r = report[protocol]
    (before,) = _model_stats(r["stats_before"])
    (after,) = _model_stats(r["stats_after"])
    assert after["name"] == MODEL and after["version"] == "1"
    # one successful shared-memory request of 2 images between the two reads (the refused ones never ran)
    assert _count(after, "inference_count") - _count(before, "inference_count") == 2
    assert _count(after, "execution_count") - _count(before, "execution_count") == 1
    for step in ("success", "queue", "compute_infer", "compute_input", "compute_output"):
        assert (
            _count(after, "inference_stats", step, "count") - _count(before, "inference_stats", step, "count")
            == 1
        )
        assert _count(after, "inference_stats", step, "ns") > _count(before, "inference_stats", step, "ns")
    assert _count(after, "last_inference") >= _count(before, "last_inference") > 0
    runs = {int(b["batch_size"]): _count(b, "compute_infer", "count") for b in after["batch_stats"]}
    runs_before = {int(b["batch_size"]): _count(b, "compute_infer", "count") for b in before["batch_stats"]}
    assert runs[2] - runs_before.get(2, 0) == 1  # the 2 images ran as one batch
    assert _model_stats(r["stats_version"])[0]["version"] == "1"
    assert [m["name"] for m in _model_stats(r["stats_all"])] == [MODEL]
    assert r["stats_unknown"] is not None
    assert r["stats_unknown"].startswith("404" if protocol == "http" else "StatusCode.NOT_FOUND")
