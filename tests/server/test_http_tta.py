"""``tta=official|mmseg`` over REST, and strict query strings on every route that takes options."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import Depends, FastAPI, Query
from fastapi.testclient import TestClient

from server.http.errors import install_error_handlers
from server.http.strict import STRICT_QUERY
from tests.conftest import encode, make_scene

SCENE = make_scene(40, 60)


def post(client: TestClient, query: str, image: np.ndarray = SCENE):
    files = {"image": ("scene.png", encode(image), "image/png")}
    return client.post(f"/segment?{query}", files=files)


def test_official_defaults_come_from_the_model_then_the_procedure(client: TestClient) -> None:
    response = post(client, "tta=official&format=json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (60, 40)
    # no eval metadata on this model: base = the image's long side, crop = its preferred size (32),
    # stride int(32 * 2/3), flip on as in MultiEvalModule
    assert body["tta"] == {
        "tta": "official",
        "base_size": [60, 60],
        "crop_size": [32, 32],
        "stride": [21, 21],
        "scales": [1.0],
        "flip": True,
        "align_corners": True,
    }
    assert body["flip"] is True


def test_mmseg_options_and_image_output(client: TestClient) -> None:
    response = post(client, "tta=mmseg&crop_size=24x32&stride=16&scales=0.75,1.25&flip=true&format=json")
    assert response.status_code == 200, response.text
    preset = response.json()["tta"]
    assert preset["crop_size"] == [24, 32] and preset["stride"] == [16, 16] and preset["base_size"] is None
    assert preset["scales"] == [0.75, 1.25] and preset["flip"] is True
    picture = post(client, "tta=mmseg&base_size=120x80&format=index")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("tta=oficial", "tta"),
        ("base_size=96", "only apply with tta"),
        ("tta=official&base_size=abc", "base_size must be a number or AxB"),
        ("tta=official&crop_size=96x64", "one number for crop_size"),
        ("tta=official&crop_size=4", "crop_size must be within [16, 8192]"),
        ("tta=official&crop_size=64&stride=4", "stride must be within [8, 8192]"),
        ("tta=official&crop_size=128&stride=8", "raise stride"),
        ("tta=official&mode=slide", "mode=slide"),
        ("tta=official&max_size=64", "max_size does not apply"),
        ("tta=mmseg&base_size=96&flip=true", "base_size (the test pipeline's Resize scale) does not apply"),
        ("tta=mmseg&crop_size=16&stride=32", "must not exceed crop_size"),
        ("tta=official&model=plain", "has no 'logits' output"),
    ],
)
def test_bad_preset_options_are_422(client: TestClient, query: str, fragment: str) -> None:
    response = post(client, query)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]["message"]


def test_unknown_query_parameter_is_422_naming_it_and_the_accepted_ones(client: TestClient) -> None:
    response = post(client, "fromat=json")
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "'fromat' (did you mean 'format'?)" in message
    for name in ("format", "tta", "base_size", "crop_size", "stride", "scales", "flip", "model"):
        assert name in message.split("accepted: ")[1].split(", ")
    # no body needed: refused before the upload is read
    assert client.post("/segment?tta=official&basesize=2048").status_code == 422


def test_every_documented_option_is_accepted(client: TestClient) -> None:
    """OpenAPI and the strict check agree: what /docs lists is exactly what the route accepts."""
    spec = client.get("/openapi.json").json()
    documented = {p["name"] for p in spec["paths"]["/segment"]["post"]["parameters"] if p["in"] == "query"}
    assert {"tta", "base_size", "crop_size", "stride"} <= documented
    message = post(client, "nope=1").json()["error"]["message"]
    assert set(message.split("accepted: ")[1].split(", ")) == documented


def test_routes_without_options_are_left_alone(client: TestClient) -> None:
    assert client.get("/healthz?cache=1").status_code == 200
    assert client.get("/v1/models?x=1").status_code == 200


def test_query_names_come_from_the_route_and_its_dependencies() -> None:
    def paging(limit: int = Query(10), page_token: str | None = Query(None, alias="pageToken")) -> int:
        return limit

    app = FastAPI(dependencies=[STRICT_QUERY])
    install_error_handlers(app)

    @app.get("/items")
    async def items(q: str = "", limit: int = Depends(paging)) -> dict[str, int]:
        return {"limit": limit}

    @app.get("/v2/things")
    async def things(verbose: bool = False) -> dict[str, bool]:
        return {"verbose": verbose}

    with TestClient(app) as test_client:
        assert test_client.get("/items?q=a&limit=3&pageToken=x").json() == {"limit": 3}
        refused = test_client.get("/items?lmit=3&q=a&x=1")
        assert refused.status_code == 422
        message = refused.json()["error"]["message"]
        assert "'lmit' (did you mean 'limit'?), 'x'" in message and "accepted: limit, pageToken, q" in message
        kserve = test_client.get("/v2/things?verbos=1")  # the KServe error shape
        assert kserve.status_code == 400 and "verbos" in kserve.json()["error"]


def test_a_request_with_more_passes_than_the_queue_is_served(app_factory) -> None:  # type: ignore[no-untyped-def]
    """official at base 240, crop 16, flip: hundreds of windows through a queue of 2."""
    client, _ = app_factory(max_queue=2, max_passes=2000)
    response = post(client, "tta=official&base_size=240&crop_size=16&scales=0.5,1&format=json")
    assert response.status_code == 200, response.text
    response = post(client, "mode=slide&scales=1,2&flip=true&format=json")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        # the request that launched every window at once: refused by its cost before any work
        ("tta=official&base_size=2048&crop_size=16&stride=8", "model passes; the server's limit is 256"),
        ("tta=official&base_size=4096&scales=2", "max_pixels"),
        ("mode=slide&scales=4,4,4,4&flip=true", "max_passes"),
    ],
)
def test_requests_over_their_cost_are_413_naming_cost_and_limit(
    client: TestClient, query: str, fragment: str
) -> None:
    response = post(client, query)
    assert response.status_code == 413, response.text
    message = response.json()["error"]["message"]
    assert fragment in message
    assert client.get("/readyz").status_code == 200


def test_pixel_budget_over_all_passes_is_413(app_factory) -> None:  # type: ignore[no-untyped-def]
    client, _ = app_factory(max_request_pixels=5000)
    response = post(client, "scales=1,1.5&flip=true&format=json")
    assert response.status_code == 413, response.text
    assert "max_request_pixels" in response.json()["error"]["message"]
    assert post(client, "format=json&max_size=32").status_code == 200
