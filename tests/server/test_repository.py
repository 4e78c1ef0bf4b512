"""The model repository in process: layout and policies, versions on every REST door, the repository API.

Swaps under a running stream of requests, polling and tritonclient live in test_swap.py (real processes).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from common.contract import DEFAULT_CHECKPOINT, DEFAULT_MODEL_NAME, DEFAULT_ONNX
from export.triton import render_config, write_triton_model
from server.engine import Engine
from server.errors import ModelLoadError, ModelNotFound
from server.instance import BatchingConfig
from server.kserve import codec
from server.segmentation import Segmenter, SegmentOptions
from server.settings import Settings
from server.versions import VersionPolicy, parse_policy, policy_from_config, read_model_dir
from tests.conftest import encode, make_scene
from tests.onnx_fixtures import build_model, write_model

V2_CLASSES = ["void", "rouge", "vert", "bleu"]  # same weights, other names: tells the versions apart


def add_version(repo: Path, version: int, *, name: str = "tiny", broken: bool = False) -> Path:
    """``repo/name/version/model.onnx``; version 2 and later carry V2_CLASSES."""
    path = repo / name / str(version) / "model.onnx"
    if broken:  # a readable ONNX file that breaks the contract: its input is not called "image"
        return write_model(path, input_name="pixels")
    return write_model(path, classes=V2_CLASSES) if version >= 2 else write_model(path)


def repo_settings(repo: Path, **overrides: Any) -> dict[str, Any]:
    return {"models": [], "model_repository": repo, **overrides}


def engine_settings(repo: Path, **overrides: Any) -> Settings:
    overrides.setdefault("infer_at_preferred_size", False)
    return Settings(model_repository=repo, providers=["CPUExecutionProvider"], warmup_sizes=[], **overrides)


# --- layout and policies ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, policy",
    [
        ("latest:1", VersionPolicy("latest", 1)),
        ("latest", VersionPolicy("latest", 1)),
        ("LATEST:3", VersionPolicy("latest", 3)),
        ("all", VersionPolicy("all")),
        ("specific:3,1", VersionPolicy("specific", versions=(1, 3))),
    ],
)
def test_parse_policy(text: str, policy: VersionPolicy) -> None:
    assert parse_policy(text) == policy


@pytest.mark.parametrize("text", ["latest:0", "newest", "specific:", "specific:0", "all:2", "latest:x"])
def test_bad_policy_is_a_configuration_error(text: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="version policy"):
        parse_policy(text)
    with pytest.raises(ValidationError, match="version policy"):
        Settings(model_repository=tmp_path, version_policy=text)


def test_policy_select() -> None:
    assert VersionPolicy("latest", 2).select([3, 1, 7]) == [3, 7]
    assert VersionPolicy("all").select([2, 1]) == [1, 2]
    assert VersionPolicy("specific", versions=(1, 5)).select([1, 2, 3]) == [1]


def test_policy_from_config_pbtxt() -> None:
    exported = render_config(build_model(), "tiny")  # what danet-export --triton-repo writes
    assert policy_from_config(exported) == VersionPolicy("latest", 1)
    assert policy_from_config('name: "x"\n') is None
    assert policy_from_config("version_policy: { all { }}") == VersionPolicy("all")
    assert policy_from_config("version_policy { specific { versions: [1, 4] } }") == VersionPolicy(
        "specific", versions=(1, 4)
    )
    assert policy_from_config("version_policy: { specific: { versions: 2 versions: 3 } }") == VersionPolicy(
        "specific", versions=(2, 3)
    )
    assert policy_from_config("version_policy: { latest: { num_versions: 2 } }") == VersionPolicy("latest", 2)


def test_read_model_dir(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    add_version(tmp_path, 10)
    (tmp_path / "tiny" / "notes").mkdir()
    (tmp_path / "tiny" / "0").mkdir()
    found = read_model_dir(tmp_path / "tiny", VersionPolicy("latest", 1))
    assert list(found.versions) == ["1", "10"] and found.wanted() == ["10"] and found.error is None
    (tmp_path / "tiny" / "config.pbtxt").write_text('name: "other"\n')
    assert "names the model 'other'" in (read_model_dir(tmp_path / "tiny", VersionPolicy()).error or "")
    (tmp_path / "tiny" / "config.pbtxt").write_text('name: "tiny"\nplatform: "tensorrt_plan"\n')
    assert "onnxruntime_onnx" in (read_model_dir(tmp_path / "tiny", VersionPolicy()).error or "")


def test_settings_take_one_source(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(ValidationError, match="not both"):
        Settings(models=[tiny_onnx], model_repository=tmp_path)
    with pytest.raises(ValidationError, match="need model_repository"):
        Settings(model_control_mode="explicit")


# --- start-up -----------------------------------------------------------------------------------------
def start(settings: Settings) -> Engine:
    engine = Engine(settings)
    asyncio.run(engine.start())
    return engine


def test_latest_two_versions_serve_and_the_newest_answers(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    add_version(tmp_path, 2)
    add_version(tmp_path, 3)
    settings = engine_settings(tmp_path, version_policy="latest:2")
    engine = start(settings)
    try:
        assert [v.version for v in engine.versions("tiny")] == ["2", "3"]
        assert engine.get_model("tiny").version == "3" and engine.default_model == "tiny"
        result = asyncio.run(Segmenter(engine).segment(make_scene(), SegmentOptions(), version="2"))
        assert result.version == "2" and result.info is not None and result.info.classes == V2_CLASSES
        with pytest.raises(ModelNotFound, match="no ready version '1'"):
            engine.get_model("tiny", "1")
    finally:
        asyncio.run(engine.close())


def test_broken_repository_fails_start_up_clearly(tmp_path: Path) -> None:
    add_version(tmp_path, 1, broken=True)
    engine = Engine(Settings(model_repository=tmp_path, providers=["CPUExecutionProvider"]))
    with pytest.raises(ModelLoadError, match="input named 'image'"):
        asyncio.run(engine.load())
    missing = Settings(model_repository=tmp_path, model_control_mode="explicit", load_models=["nope"])
    with pytest.raises(ModelLoadError, match="not in the model repository"):
        asyncio.run(Engine(missing).load())


# --- versions on the REST doors --------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_version(repo, 1)
    add_version(repo, 2)
    (repo / "tiny" / "config.pbtxt").write_text('name: "tiny"\nversion_policy: { all: {} }\n')
    return repo


def test_versions_on_rest(app_factory: Any, two_versions: Path) -> None:
    client, _ = app_factory(**repo_settings(two_versions))
    assert client.get("/v2/models/tiny").json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/7/ready").status_code == 404
    body = {"inputs": [{"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [9] * 192}]}
    newest = client.post("/v2/models/tiny/infer", json=body)
    assert newest.json()["model_version"] == "2" and newest.headers["x-danet-model-version"] == "2"
    pinned = client.post("/v2/models/tiny/versions/1/infer", json=body)
    assert pinned.json()["model_version"] == "1" and pinned.headers["x-danet-model-version"] == "1"
    assert client.post("/v2/models/tiny/versions/5/infer", json=body).status_code == 404

    image = encode(make_scene())
    one = client.post("/segment?format=json&version=1", content=image, headers={"Content-Type": "image/png"})
    assert one.headers["x-danet-model-version"] == "1" and one.json()["version"] == "1"
    assert one.json()["classes"][0]["name"] in ("background", "red", "green", "blue")
    two = client.post("/segment?format=json", content=image, headers={"Content-Type": "image/png"})
    assert two.headers["x-danet-model-version"] == "2"
    assert {c["name"] for c in two.json()["classes"]} <= set(V2_CLASSES)  # v2's own class names
    missing = client.post("/segment?version=9", content=image, headers={"Content-Type": "image/png"})
    assert missing.status_code == 404 and "version '9'" in missing.json()["error"]["message"]

    [listed] = client.get("/v1/models").json()["models"]
    assert listed["version"] == "2" and listed["versions"] == ["1", "2"] and listed["classes"] == V2_CLASSES
    assert client.get("/readyz").json()["models"]["tiny"]["versions"] == ["1", "2"]


def test_files_mode_is_version_1_and_refuses_control(client: TestClient) -> None:
    assert client.get("/v2/models/tiny").json()["versions"] == ["1"]
    index = client.post("/v2/repository/index").json()
    assert {"name": "tiny", "version": "1", "state": "READY"} in index
    refused = client.post("/v2/repository/models/tiny/load")
    assert refused.status_code == 400 and "model control is disabled" in refused.json()["error"]
    assert client.post("/v2/repository/models/tiny/unload").status_code == 400
    assert "model_repository" in client.get("/v2").json()["extensions"]


# --- the repository API (explicit mode) ------------------------------------------------------------
def test_explicit_load_swap_failure_and_unload(app_factory: Any, tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    write_model(tmp_path / "other" / "1" / "model.onnx")
    client, engine = app_factory(**repo_settings(tmp_path, model_control_mode="explicit"))
    assert client.get("/readyz").status_code == 200  # ready with nothing loaded, as Triton
    assert client.post("/v2/repository/index", json={}).json() == [{"name": "other"}, {"name": "tiny"}]
    assert client.get("/v2/models/tiny/ready").status_code == 404
    assert (
        client.post(
            "/segment", content=encode(make_scene()), headers={"Content-Type": "image/png"}
        ).status_code
        == 404
    )

    assert client.post("/v2/repository/models/tiny/load").status_code == 200
    assert client.get("/v2/models/tiny/ready").status_code == 200

    old_session = weakref.ref(engine.instance("tiny").handle.session)
    add_version(tmp_path, 2)
    assert client.post("/v2/repository/models/tiny/load", json={"parameters": {}}).status_code == 200
    gc.collect()
    assert old_session() is None  # v1 was released, not just hidden
    metrics = client.get("/metrics").text
    assert 'danet_model_version_serving{model="tiny",version="2"} 1.0' in metrics
    assert 'version="1"' not in metrics.split("danet_model_version_serving", 1)[1]
    index = client.post("/v2/repository/index").json()
    assert {"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert {"name": "tiny", "version": "2", "state": "READY"} in index
    assert client.post("/v2/repository/index", json={"ready": True}).json() == [
        {"name": "tiny", "version": "2", "state": "READY"}
    ]

    add_version(tmp_path, 3, broken=True)
    failed = client.post("/v2/repository/models/tiny/load")
    assert failed.status_code == 400 and "version 3" in failed.json()["error"]
    assert "input named 'image'" in failed.json()["error"]
    [row] = [r for r in client.post("/v2/repository/index").json() if r.get("version") == "3"]
    assert row["state"] == "UNAVAILABLE" and "input named 'image'" in row["reason"]
    assert engine.get_model("tiny").version == "2"  # untouched

    assert client.post("/v2/repository/models/tiny/unload").status_code == 200
    for response in (
        client.get("/v2/models/tiny"),
        client.get("/v2/models/tiny/ready"),
        client.post("/v2/models/tiny/infer", json={}),
        client.post(
            "/segment?model=tiny", content=encode(make_scene()), headers={"Content-Type": "image/png"}
        ),
    ):
        assert response.status_code == 404, response.text
    assert client.get("/v1/models").json() == {"models": []}
    assert 'danet_model_version_serving{model="tiny"' not in client.get("/metrics").text
    assert client.post("/v2/repository/models/nope/load").status_code == 404
    assert client.post("/v2/repository/models/nope/unload").status_code == 404
    override = client.post("/v2/repository/models/tiny/load", json={"parameters": {"config": "{}"}})
    assert override.status_code == 400 and "not supported" in override.json()["error"]
    assert client.post("/v2/repository/index", content=b"[1]").status_code == 400


def test_poll_once_follows_the_directory(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    settings = engine_settings(tmp_path, model_control_mode="poll")
    engine = Engine(settings)

    async def scenario() -> list[str]:
        await engine.load()  # not start(): no background polling here, each scan is explicit
        seen = [engine.get_model("tiny").version]
        add_version(tmp_path, 2)
        await engine.repository.poll_once()
        seen.append(engine.get_model("tiny").version)
        add_version(tmp_path, 3, broken=True)
        await engine.repository.poll_once()
        await engine.repository.poll_once()  # the same broken files are not retried
        seen.append(engine.get_model("tiny").version)
        for version in ("2", "3"):
            for file in (tmp_path / "tiny" / version).iterdir():
                file.unlink()
            (tmp_path / "tiny" / version).rmdir()
        await engine.repository.poll_once()
        seen.append(engine.get_model("tiny").version)  # v1 is the latest again
        (tmp_path / "tiny" / "1" / "model.onnx").unlink()
        await engine.repository.poll_once()
        seen.append(engine.get_model("tiny").version)  # a version without its file: the old session stays
        (tmp_path / "tiny" / "1").rmdir()
        await engine.repository.poll_once()  # no version directory left: unloaded
        with pytest.raises(ModelNotFound):
            engine.get_model("tiny")
        await engine.close()
        return seen

    assert asyncio.run(scenario()) == ["1", "2", "2", "1", "1"]
    rows = engine.repository.index()
    assert any(r.get("version") == "3" and r["state"] == "UNAVAILABLE" for r in rows)


def test_model_info_of_each_version_is_its_own(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    add_version(tmp_path, 2)
    engine = start(engine_settings(tmp_path, version_policy="all"))
    try:
        one, two = engine.versions("tiny")
        assert (one.version, two.version) == ("1", "2") and one.classes != two.classes
        out = asyncio.run(engine.infer("tiny", np.zeros((1, 8, 8, 3), np.uint8), ["labels"], version="1"))
        assert out["labels"].shape == (1, 8, 8)
    finally:
        asyncio.run(engine.close())


# --- danet-export --triton-repo -> danet-serve --model-repository -----------------------------------
def serves_unchanged(app_factory: Any, repo: Path, name: str) -> None:
    """The repository serves as written, with the same answers as the ONNX file served directly."""
    client, _ = app_factory(**repo_settings(repo))
    image = encode(make_scene(40, 56))
    via_repo = client.post("/segment?format=index", content=image, headers={"Content-Type": "image/png"})
    assert via_repo.status_code == 200, via_repo.text
    assert via_repo.headers["x-danet-model"] == name and via_repo.headers["x-danet-model-version"] == "1"
    direct, _ = app_factory(models=[repo / name / "1" / "model.onnx"])
    same = direct.post("/segment?format=index", content=image, headers={"Content-Type": "image/png"})
    assert same.content == via_repo.content
    assert client.post("/v2/repository/index").json() == [{"name": name, "version": "1", "state": "READY"}]
    assert client.get(f"/v2/models/{name}/config").json()["name"] == name


@pytest.mark.skipif(not DEFAULT_ONNX.is_file(), reason=f"embedded default model {DEFAULT_ONNX} not built")
def test_triton_repo_of_the_default_model_serves_unchanged(app_factory: Any, tmp_path: Path) -> None:
    """What ``--triton-repo`` writes (``export.triton.write_triton_model``) from the committed default model."""
    written = write_triton_model(tmp_path, DEFAULT_MODEL_NAME, DEFAULT_ONNX)
    assert written.config.read_text().count("version_policy") == 1
    serves_unchanged(app_factory, tmp_path, DEFAULT_MODEL_NAME)


@pytest.mark.slow
def test_danet_export_cli_triton_repo_serves_unchanged(app_factory: Any, tmp_path: Path) -> None:
    """The whole command (about a minute on a small CPU box, hence ``slow``)."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("danet-export")),
            str(DEFAULT_CHECKPOINT),
            "--output",
            str(tmp_path / "model.onnx"),
            "--triton-repo",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [name] = [p.name for p in (tmp_path / "repo").iterdir()]
    serves_unchanged(app_factory, tmp_path / "repo", name)


def test_repository_api_needs_the_api_key(app_factory: Any, two_versions: Path) -> None:
    client, _ = app_factory(**repo_settings(two_versions, model_control_mode="explicit", api_key="k"))
    for path in (
        "/v2/repository/index",
        "/v2/repository/models/tiny/load",
        "/v2/repository/models/tiny/unload",
    ):
        assert client.post(path).status_code == 401
    assert client.post("/v2/repository/index", headers={"X-API-Key": "k"}).json() == [{"name": "tiny"}]


# --- per-model batching from config.pbtxt -------------------------------------------------------------
def test_each_model_batches_as_its_config_pbtxt_says(tmp_path: Path) -> None:
    """``batched`` declares Triton's batching and two instances; ``plain`` has no config: the server's
    settings (batching auto = off on the CPU). The model configuration reports each one's own."""
    add_version(tmp_path, 1, name="batched")
    add_version(tmp_path, 1, name="plain")
    (tmp_path / "batched" / "config.pbtxt").write_text(
        'name: "batched"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        "dynamic_batching { max_queue_delay_microseconds: 2500 preferred_batch_size: [2, 4] }\n"
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
    )
    engine = Engine(engine_settings(tmp_path))
    asyncio.run(engine.start())
    try:
        batched, plain = engine.instance("batched"), engine.instance("plain")
        assert batched.batching == BatchingConfig(4, 2500, (2, 4), 2, "config.pbtxt")
        assert batched.batcher.max_batch == 4 and batched.batcher.preferred == {2, 4}
        assert len(batched.batcher._threads) == 2
        assert plain.batching.max_batch_size == 1 and plain.batching.source == "settings"
        config = codec.model_config(batched)
        assert config["max_batch_size"] == 4 and config["instance_group"] == [
            {"count": 2, "kind": "KIND_CPU"}
        ]
        assert config["dynamic_batching"] == {
            "max_queue_delay_microseconds": 2500,
            "preferred_batch_size": [2, 4],
        }
        assert "dynamic_batching" not in codec.model_config(plain)
        out = asyncio.run(engine.infer("batched", np.zeros((2, 8, 8, 3), np.uint8), ["labels"]))
        assert out["labels"].shape == (2, 8, 8)
    finally:
        asyncio.run(engine.close())
