"""What an unauthenticated or careless client can reach: UTF-8 API keys (REST and gRPC), ``require_api_key``,
``metrics_public``, and a readiness answer that shows no paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from protos.gen.inference import grpc_service_pb2 as kserve
from protos.gen.inference import grpc_service_pb2_grpc as kserve_grpc
from server.settings import Settings
from tests.grpc.harness import ServerThread, settings_for

KEY = "clé-σ-鍵"  # not ASCII: HTTP carries its UTF-8 bytes, which ASGI hands over decoded as latin-1


def test_a_utf8_api_key_matches_on_rest(app_factory: Any) -> None:
    client, _ = app_factory(api_key=KEY)
    good = KEY.encode("utf-8")
    assert client.get("/v1/models", headers={"X-API-Key": good}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": b"Bearer " + good}).status_code == 200
    for wrong in (KEY.encode("latin-1", "replace"), good[:-1], b"cle-s-k"):
        assert client.get("/v1/models", headers={"X-API-Key": wrong}).status_code == 401
    assert client.get("/v1/models").status_code == 401


def test_a_utf8_api_key_matches_on_grpc_as_binary_metadata(tiny_onnx: Path) -> None:
    server = ServerThread(settings_for(tiny_onnx, api_key=KEY))
    try:
        with server.channel() as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            request = kserve.ServerMetadataRequest()
            reply = stub.ServerMetadata(request, metadata=(("x-api-key-bin", KEY.encode()),), timeout=10)
            assert reply.name
            with pytest.raises(grpc.RpcError) as refused:
                stub.ServerMetadata(request, metadata=(("x-api-key-bin", b"nope"),), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop()


def test_metrics_need_the_key_unless_metrics_public(app_factory: Any) -> None:
    closed, _ = app_factory(api_key="k")
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers={"X-API-Key": "k"}).status_code == 200
    scraped, _ = app_factory(api_key="k", metrics_public=True)
    assert scraped.get("/metrics").status_code == 200
    assert "danet_" in scraped.get("/metrics").text
    assert scraped.get("/v1/models").status_code == 401  # nothing else opens


def test_require_api_key_refuses_settings_without_one() -> None:
    with pytest.raises(ValidationError, match="require_api_key is set but no API key"):
        Settings(require_api_key=True)
    with pytest.raises(ValidationError, match="require_api_key"):
        Settings(require_api_key=True, api_key="")  # an empty key (compose's default) is no key
    assert Settings(require_api_key=True, api_key="k").api_key_value() == "k"


def test_danet_serve_refuses_to_start_without_a_required_key(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DANET_REQUIRE_API_KEY": "true", "DANET_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, "-m", "server.main", "--http-port", "0", "--grpc-port", "-1"],
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "require_api_key" in done.stderr and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if "require_api_key" in line]) == 1


def test_readyz_shows_no_paths(app_factory: Any, tmp_path: Path, tiny_onnx: Path) -> None:
    repo = tmp_path / "models-here"
    (repo / "tiny" / "1").mkdir(parents=True)
    (repo / "tiny" / "1" / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    client, _ = app_factory(models=[], model_repository=repo, api_key="k")
    for path in ("/readyz", "/healthz", "/v2/health/ready"):
        reply = client.get(path)
        assert reply.status_code == 200
        assert "models-here" not in reply.text and str(tmp_path) not in reply.text, path
    for path in ("/v1/models", "/v2/models/tiny", "/v2"):
        reply = client.get(path, headers={"X-API-Key": "k"})
        assert reply.status_code == 200 and str(tmp_path) not in reply.text, path


def test_readyz_shows_readiness_only_without_the_key(app_factory) -> None:  # type: ignore[no-untyped-def]
    client, _ = app_factory(api_key="s3cret")
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready", "ready": True}
    keyed = client.get("/readyz", headers={"X-API-Key": "s3cret"}).json()
    assert keyed["ready"] is True and "tiny" in keyed["models"]
