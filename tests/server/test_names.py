"""Model names, versions and repository paths: one validation wherever a name enters, nothing outside the
repository root, odd entries listed instead of crashing, no absolute path in any answer.

In process (TestClient over a started Engine) for every door; tests/server/test_names_live.py repeats the
attacks against a real danet-serve process over HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from server.engine import Engine
from server.errors import InvalidOption, ModelNotFound
from server.names import check_model_name, check_version, name_problem, version_problem
from server.settings import Settings
from server.versions import VersionPolicy, read_model_dir, scan_repository
from tests.onnx_fixtures import write_model

INFER = {"inputs": [{"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [9] * 192}]}


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "empty"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a/b", "'/'"),
        ("a\\b", "'\\'"),
        ("a\x00b", "U+0000"),
        ("a\nb", "U+000A"),
        ("a\x7fb", "U+007F"),
        ("a\u202eb", "U+202E"),  # right-to-left override: a name that displays as another
        ("x" * 256, "256 bytes"),
        ("é" * 128, "256 bytes"),  # 128 characters, but 256 bytes of UTF-8
    ],
)
def test_bad_model_names(name: str, problem: str) -> None:
    assert problem in (name_problem(name) or "")
    with pytest.raises(InvalidOption, match="invalid model name"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["tiny", "a.b_c-1", "..a", "a..", "x" * 255, "é" * 127, "Straße", "模型"])
def test_good_model_names(name: str) -> None:
    assert name_problem(name) is None and check_model_name(name) == name


@pytest.mark.parametrize("version", ["", "0", "00", "-1", "1.0", " 1", "²", "١", "1²", "+1", "0x1"])
def test_bad_versions(version: str) -> None:
    assert version_problem(version) is not None
    with pytest.raises(InvalidOption, match="invalid model version"):
        check_version(version)


@pytest.mark.parametrize("version", ["1", "7", "01", "123456789012345678901234567890"])
def test_good_versions(version: str) -> None:
    assert version_problem(version) is None


# --- a repository with every kind of odd entry ------------------------------------------------------
def odd_repository(tmp_path: Path) -> Path:
    """``repo/tiny/{1,²,3->outside}``, ``repo/outside -> elsewhere``, a bad name, a hidden directory."""
    repo = tmp_path / "repo"
    write_model(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "²").mkdir()
    write_model(repo / "tiny" / "²" / "model.onnx")
    elsewhere = tmp_path / "elsewhere"
    write_model(elsewhere / "outside" / "1" / "model.onnx")
    write_model(elsewhere / "version" / "model.onnx")
    (repo / "outside").symlink_to(elsewhere / "outside", target_is_directory=True)
    (repo / "tiny" / "3").symlink_to(elsewhere / "version", target_is_directory=True)
    write_model(repo / "linked" / "1" / "real.onnx")
    (repo / "linked" / "1" / "model.onnx").symlink_to(elsewhere / "version" / "model.onnx")
    write_model(repo / "bad\x01name" / "1" / "model.onnx")
    (repo / ".git").mkdir()
    return repo


def test_scan_lists_odd_entries_without_raising(tmp_path: Path) -> None:
    repo = odd_repository(tmp_path)
    found = scan_repository(repo, VersionPolicy())
    assert sorted(found) == ["bad\x01name", "linked", "outside", "tiny"]  # hidden entries are skipped
    assert list(found["tiny"].versions) == ["1"]
    assert "not a version" in found["tiny"].problems["²"]
    assert found["tiny"].problems["3"] == "tiny/3 resolves outside the model repository"
    assert found["linked"].problems["1"] == "linked/1/model.onnx resolves outside the model repository"
    assert found["outside"].rejected and "resolves outside" in (found["outside"].error or "")
    assert found["bad\x01name"].rejected and "U+0001" in (found["bad\x01name"].error or "")
    assert not found["tiny"].rejected
    for entry in found.values():
        shown = " ".join([entry.error or "", *entry.problems.values()])
        assert str(tmp_path) not in shown

    allowed = scan_repository(repo, VersionPolicy("all"), allow_links_outside=True)
    assert list(allowed["tiny"].versions) == ["1", "3"] and not allowed["outside"].rejected
    assert list(allowed["linked"].versions) == ["1"]


def test_config_error_reasons_are_relative(tmp_path: Path) -> None:
    write_model(tmp_path / "tiny" / "1" / "model.onnx")
    (tmp_path / "tiny" / "config.pbtxt").write_text('name: "other"\n')
    error = read_model_dir(tmp_path / "tiny", VersionPolicy()).error or ""
    assert error.startswith("tiny/config.pbtxt: ") and str(tmp_path) not in error


def settings(repo: Path, **overrides: Any) -> dict[str, Any]:
    return {"models": [], "model_repository": repo, **overrides}


def test_odd_entries_do_not_stop_start_up_and_show_in_the_index(app_factory: Any, tmp_path: Path) -> None:
    repo = odd_repository(tmp_path)
    client, engine = app_factory(**settings(repo))
    assert client.get("/readyz").status_code == 200
    assert engine.repository.names() == ["tiny"]  # "linked" has no version that may be served
    rows = client.post("/v2/repository/index").json()
    by_key = {(r["name"], r.get("version", "")): r for r in rows}
    assert by_key[("tiny", "1")]["state"] == "READY"
    for key in (("tiny", "²"), ("tiny", "3"), ("linked", "1"), ("outside", ""), ("bad\x01name", "")):
        assert by_key[key]["state"] == "UNAVAILABLE" and by_key[key]["reason"], key
    assert "resolves outside" in by_key[("outside", "")]["reason"]
    for path in ("/readyz", "/v1/models", "/v2/models/tiny", "/v2/repository/index"):
        response = client.post(path) if path.startswith("/v2/repository") else client.get(path)
        assert str(tmp_path) not in response.text, path
        assert str(tmp_path.resolve()) not in response.text, path


def test_lookups_refuse_bad_names_and_versions(app_factory: Any, tmp_path: Path) -> None:
    write_model(tmp_path / "tiny" / "1" / "model.onnx")
    client, engine = app_factory(**settings(tmp_path))
    assert client.post("/v2/models/tiny/versions/1/infer", json=INFER).status_code == 200
    for version in ("%C2%B2", "0", "01x"):
        reply = client.post(f"/v2/models/tiny/versions/{version}/infer", json=INFER)
        assert reply.status_code == 400 and "invalid model version" in reply.json()["error"], version
    reply = client.post("/v2/models/%2e%2e/infer", json=INFER)
    assert reply.status_code in (400, 404)  # the router may not even match '..'
    image = {"Content-Type": "image/png"}
    for query in ("model=a%00b", "model=..", "version=%C2%B2"):
        reply = client.post(f"/segment?{query}", content=b"\x89PNG", headers=image)
        assert reply.status_code in (400, 422), query
        assert reply.json()["error"]["code"] == "invalid_option", query
    with pytest.raises(InvalidOption):
        engine.repository.current("a/b")
    with pytest.raises(ModelNotFound):
        engine.repository.current("nope", "1")


def test_load_refuses_dot_dot_separators_and_links_outside(app_factory: Any, tmp_path: Path) -> None:
    repo = odd_repository(tmp_path)
    write_model(tmp_path / "1" / "model.onnx")  # what repo/../1/model.onnx would serve
    client, engine = app_factory(**settings(repo, model_control_mode="explicit", load_models=["tiny"]))
    for name in ("%2e%2e", "..", ".", "a%5Cb", "a%00b", "%C2%85x"):
        reply = client.post(f"/v2/repository/models/{name}/load")
        assert reply.status_code in (400, 404), name  # 404: a path the router does not route at all
        assert "1" not in engine.repository.names()
    reply = client.post("/v2/repository/models/%2e%2e/load")
    assert reply.status_code == 400 and "invalid model name" in reply.json()["error"]
    reply = client.post("/v2/repository/models/%2e%2e/unload")
    assert reply.status_code == 400

    reply = client.post("/v2/repository/models/outside/load")
    assert reply.status_code == 400 and "resolves outside the model repository" in reply.json()["error"]
    assert str(tmp_path) not in reply.text and "elsewhere" not in reply.text
    reply = client.post("/v2/repository/models/linked/load")
    assert reply.status_code == 400 and "linked/1/model.onnx resolves outside" in reply.json()["error"]
    assert str(tmp_path) not in reply.text
    assert engine.repository.names() == ["tiny"]


def test_links_outside_load_when_allowed(app_factory: Any, tmp_path: Path) -> None:
    repo = odd_repository(tmp_path)
    client, engine = app_factory(
        **settings(
            repo, model_control_mode="explicit", load_models=["tiny"], allow_links_outside_repository=True
        )
    )
    assert client.post("/v2/repository/models/outside/load").status_code == 200
    assert "outside" in engine.repository.names()


def test_broken_model_reason_is_relative(app_factory: Any, tmp_path: Path) -> None:
    write_model(tmp_path / "tiny" / "1" / "model.onnx")
    (tmp_path / "spare" / "1").mkdir(parents=True)
    (tmp_path / "spare" / "1" / "model.onnx").write_bytes(b"not onnx")
    client, _ = app_factory(**settings(tmp_path, model_control_mode="explicit", load_models=["tiny"]))
    reply = client.post("/v2/repository/models/spare/load")
    assert reply.status_code == 400 and "spare/1/model.onnx" in reply.json()["error"]
    assert str(tmp_path) not in reply.text
    row = next(r for r in client.post("/v2/repository/index").json() if r["name"] == "spare")
    assert row["state"] == "UNAVAILABLE" and str(tmp_path) not in row["reason"]


def test_polling_goes_on_past_odd_entries(tmp_path: Path) -> None:
    write_model(tmp_path / "tiny" / "1" / "model.onnx")
    engine = Engine(
        Settings(
            model_repository=tmp_path,
            model_control_mode="poll",
            providers=["CPUExecutionProvider"],
            warmup_sizes=[],
        )
    )

    async def scenario() -> list[str]:
        await engine.load()
        seen = [engine.get_model("tiny").version]
        (tmp_path / "tiny" / "²").mkdir()
        (tmp_path / "bad\x1bname").mkdir()
        await engine.repository.poll_once()
        write_model(tmp_path / "tiny" / "2" / "model.onnx")
        await engine.repository.poll_once()  # the odd entries are still there: v2 is picked up anyway
        seen.append(engine.get_model("tiny").version)
        await engine.close()
        return seen

    assert asyncio.run(scenario()) == ["1", "2"]
    rows = engine.repository.index()
    assert any(r.get("version") == "²" and r["state"] == "UNAVAILABLE" for r in rows)
    assert any(r["name"] == "bad\x1bname" and r["state"] == "UNAVAILABLE" for r in rows)


def test_files_mode_refuses_an_invalid_model_name(tmp_path: Path) -> None:
    from server.errors import ModelLoadError

    path = write_model(tmp_path / "x.onnx", model_name="a/b")
    engine = Engine(Settings(models=[path], providers=["CPUExecutionProvider"], warmup_sizes=[]))
    with pytest.raises(ModelLoadError, match="invalid model name"):
        asyncio.run(engine.load())
