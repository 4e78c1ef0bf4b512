"""Service endpoints, API key, CORS, readiness, metrics, docs and the web page route (in-process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import encode, make_scene
from tests.onnx_fixtures import RGB_CLASSES, RGB_PALETTE


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["models"]["tiny"]["provider"] == "CPUExecutionProvider"
    assert body["models"]["tiny"]["batching"] is False  # auto: off on CPU


def test_readiness_before_and_after_warm_up(app_factory) -> None:
    client, engine = app_factory(start=False)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    assert "loading" in response.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200
    asyncio.run(engine.load())
    response = client.get("/readyz")
    assert response.status_code == 503 and "warming up" in response.json()["error"]["message"]
    refused = client.post("/segment", content=encode(make_scene()), headers={"Content-Type": "image/png"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
    assert client.get("/v2/health/ready").status_code == 503
    asyncio.run(engine.warm_up())
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert "danet_ready 1.0" in client.get("/metrics").text
    asyncio.run(engine.close())
    response = client.get("/readyz")
    assert response.status_code == 503 and "shutting down" in response.json()["error"]["message"]


def test_v1_models(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny", "plain"]
    tiny = models[0]
    assert tiny["classes"] == RGB_CLASSES
    assert tiny["palette"] == [list(c) for c in RGB_PALETTE]
    assert tiny["provider"] == "CPUExecutionProvider"
    assert tiny["input"] == {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}
    assert {o["name"] for o in tiny["outputs"]} == {"labels", "confidence", "logits"}
    assert tiny["default"] is True and models[1]["default"] is False
    assert tiny["supports_slide"] is True and models[1]["supports_slide"] is False
    assert tiny["preferred_size"] == [32, 32]


def test_metrics_after_requests(client: TestClient) -> None:
    client.post("/segment", content=encode(make_scene()), headers={"Content-Type": "image/png"})
    client.post("/segment?model=nope", content=encode(make_scene()), headers={"Content-Type": "image/png"})
    text = client.get("/metrics").text
    assert 'danet_http_requests_total{method="POST",route="/segment",status="200"}' in text
    assert 'danet_http_requests_total{method="POST",route="/segment",status="404"}' in text
    assert 'danet_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/segment"}' in text
    assert 'danet_model_provider{model="tiny",provider="CPUExecutionProvider"} 1.0' in text
    assert 'danet_queue_depth{model="tiny"} 0.0' in text
    assert 'danet_batch_size_count{model="tiny"}' in text
    assert 'danet_inference_seconds_count{model="tiny"}' in text
    assert 'danet_provider_fallback{model="tiny"} 0.0' in text


def test_docs_and_openapi(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    # Swagger UI comes from this server (offline hosts), never from a CDN.
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text and "unpkg" not in page.text
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/segment"]["post"]
    params = {p["name"] for p in operation["parameters"]}
    assert {"model", "format", "alpha", "mode", "scales", "flip", "max_size", "rle"} <= params
    multipart = operation["requestBody"]["content"]["multipart/form-data"]
    assert set(multipart["schema"]["properties"]) == {"image", "file"}
    assert "`file`" in operation["requestBody"]["description"]
    assert "/v2/models/{model}/infer" in spec["paths"]


def test_web_page_is_self_contained(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<script" in page and 'id="file"' in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"X-API-Key": "wrong"}, 401),
        ({"Authorization": "Basic s3cret"}, 401),
        ({"Authorization": "Bearer s3cret"}, 200),
        ({"X-API-Key": "s3cret"}, 200),
    ],
)
def test_api_key(app_factory, headers: dict[str, str], status: int) -> None:
    client, _ = app_factory(api_key="s3cret")
    for path in ("/v1/models", "/metrics", "/v2", "/v2/models/tiny", "/openapi.json"):
        response = client.get(path, headers=headers)
        assert response.status_code == status, path
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
            if path.startswith("/v2"):
                assert isinstance(response.json()["error"], str)
            else:
                assert response.json()["error"]["code"] == "unauthenticated"
    response = client.post(
        "/segment", content=encode(make_scene()), headers={"Content-Type": "image/png", **headers}
    )
    assert response.status_code == status
    # liveness / readiness and the static page stay open
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"):
        assert client.get(path).status_code == 200, path


def test_api_key_off_means_open(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200


def test_cors(app_factory) -> None:
    client, _ = app_factory(cors_origins=["https://app.example"], api_key="k")
    preflight = client.options(
        "/segment",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    response = client.get("/v1/models", headers={"Origin": "https://app.example", "X-API-Key": "k"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    other = client.get("/v1/models", headers={"Origin": "https://evil.example", "X-API-Key": "k"})
    assert "access-control-allow-origin" not in other.headers


def test_replica_header_only_when_replica_id_is_set(app_factory, client: TestClient) -> None:
    assert "x-danet-replica" not in client.get("/v1/models").headers
    named, _ = app_factory(replica_id="abc123@node1", api_key="k")
    # every answer carries it, errors (here a refused key) included
    for response in (named.get("/v1/models", headers={"X-API-Key": "k"}), named.get("/v1/models")):
        assert response.headers["x-danet-replica"] == "abc123@node1"
    assert named.get("/v1/models").status_code == 401


def test_default_model_setting(app_factory, tiny_onnx: Path, tiny_onnx_no_logits: Path) -> None:
    client, _ = app_factory(models=[tiny_onnx, tiny_onnx_no_logits], default_model="plain")
    response = client.post(
        "/segment?format=json", content=encode(make_scene()), headers={"Content-Type": "image/png"}
    )
    assert response.json()["model"] == "plain"
