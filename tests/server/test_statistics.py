"""The statistics extension over REST (in-process app): Triton's JSON, what is counted, agreement with the
Prometheus metrics, failures, unknown models. tritonclient's view over REST and gRPC: tests/grpc/test_grpc_shm.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from server.errors import InvalidOption
from server.statistics import Statistics
from tests.conftest import encode, make_scene
from tests.server.conftest import AppFactory

IMAGES = np.stack([make_scene(24, 40, seed=1), make_scene(24, 40, seed=2)])
STEPS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


def infer_json(images: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "labels"}],
    }


def only(stats: dict[str, Any]) -> dict[str, Any]:
    (entry,) = stats["model_stats"]
    return entry


def prometheus(engine: Any, name: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, {"model": "tiny"})
    return float(value or 0.0)


def test_counts_follow_requests_and_agree_with_prometheus(app_factory: AppFactory) -> None:
    client, engine = app_factory()
    before = only(client.get("/v2/models/tiny/stats").json())
    for _ in range(3):
        assert client.post("/v2/models/tiny/infer", json=infer_json(IMAGES)).status_code == 200
    assert (
        client.post(
            "/segment?format=index", content=encode(IMAGES[0]), headers={"content-type": "image/png"}
        ).status_code
        == 200
    )

    stats = only(client.get("/v2/models/tiny/stats").json())
    assert stats["name"] == "tiny" and stats["version"] == "1"
    assert set(stats["inference_stats"]) == set(STEPS)
    inference = stats["inference_stats"]
    # 3 KServe requests of 2 images and one /segment run of 1 image (the tiny model: one pass)
    assert stats["inference_count"] - before["inference_count"] == 7
    assert inference["success"]["count"] - before["inference_stats"]["success"]["count"] == 4
    assert inference["fail"] == {"count": 0, "ns": 0}
    # a request refused while decoding never reached the engine: not counted
    assert client.post("/v2/models/tiny/infer", json={"inputs": []}).status_code == 400
    stats = only(client.get("/v2/models/tiny/stats").json())
    inference = stats["inference_stats"]
    # every part of a request is counted when it ends, so the counts move together (perf_analyzer checks)
    for step in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[step]["count"] - before["inference_stats"][step]["count"] == 4
        assert inference[step]["ns"] > before["inference_stats"][step]["ns"]
    assert stats["last_inference"] > 1_600_000_000_000  # ms since the epoch

    # the same runs as the Prometheus batch metrics (warm-up included in both)
    assert stats["execution_count"] == prometheus(engine, "danet_inference_seconds_count")
    assert stats["inference_count"] == prometheus(engine, "danet_batch_size_sum")
    infer_ns = sum(b["compute_infer"]["ns"] for b in stats["batch_stats"])
    assert infer_ns == pytest.approx(
        prometheus(engine, "danet_inference_seconds_sum") * 1e9, abs=stats["execution_count"]
    )
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}[2] == 3
    # no batching on CPU: each request is its own batch, so the per-request waits are the per-batch ones
    assert inference["queue"]["count"] == stats["execution_count"]
    assert inference["queue"]["ns"] == pytest.approx(
        prometheus(engine, "danet_queue_wait_seconds_sum") * 1e9, abs=stats["execution_count"]
    )
    assert inference["compute_infer"]["ns"] == pytest.approx(infer_ns, abs=stats["execution_count"])


def test_failed_runs_are_counted_as_failures(app_factory: AppFactory) -> None:
    client, engine = app_factory()
    instance = engine.instance("tiny")

    def broken(*args: Any) -> Any:
        raise InvalidOption("the run failed")

    instance.run = broken  # type: ignore[method-assign]
    before = only(client.get("/v2/models/tiny/stats").json())
    assert client.post("/v2/models/tiny/infer", json=infer_json(IMAGES)).status_code == 400
    after = only(client.get("/v2/models/tiny/stats").json())
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert after["inference_stats"]["success"] == before["inference_stats"]["success"]
    assert after["inference_count"] == before["inference_count"]
    assert after["execution_count"] == before["execution_count"]


def test_every_model_one_version_and_unknown_models(
    app_factory: AppFactory, tiny_onnx_no_logits: Any, tiny_onnx: Any
) -> None:
    client, _ = app_factory(models=[tiny_onnx, tiny_onnx_no_logits])
    every = client.get("/v2/models/stats").json()["model_stats"]
    assert sorted((m["name"], m["version"]) for m in every) == [("plain", "1"), ("tiny", "1")]
    assert only(client.get("/v2/models/tiny/versions/1/stats").json())["version"] == "1"
    for path in ("/v2/models/nope/stats", "/v2/models/tiny/versions/9/stats"):
        response = client.get(path)
        assert response.status_code == 404 and isinstance(response.json()["error"], str)


def test_server_metadata_lists_the_extensions(app_factory: AppFactory) -> None:
    client, _ = app_factory()
    assert {"statistics", "system_shared_memory"} <= set(client.get("/v2").json()["extensions"])


def test_a_version_that_never_ran_reports_zeros() -> None:
    stats = Statistics()
    stats.executed("a", "1", 2, 0.5)
    (entry,) = stats.report([("b", "3")])["model_stats"]
    assert entry["name"] == "b" and entry["execution_count"] == 0 and entry["batch_stats"] == []
    assert all(d == {"count": 0, "ns": 0} for d in entry["inference_stats"].values())
    stats.request("b", "3", ok=False, total_s=0.25)
    (entry,) = stats.report([("b", "3")])["model_stats"]
    assert entry["inference_stats"]["fail"] == {"count": 1, "ns": 250_000_000}
    assert entry["inference_stats"]["success"] == {"count": 0, "ns": 0} and entry["inference_count"] == 0
