"""The web page's samples: listed once, served by name only, each picture with its expected map."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from server.http.routes.ui import SAMPLES_DIR, build_router, find_samples


def page_client(folder: Path) -> TestClient:
    app = FastAPI()
    app.include_router(build_router(folder))
    return TestClient(app)


def test_the_repository_samples_are_listed_with_their_maps() -> None:
    client = page_client(SAMPLES_DIR)
    listing = client.get("/samples").json()["samples"]
    names = [s["name"] for s in listing]
    assert len(names) >= 3 and all(not n.endswith(".labels.png") for n in names)
    for sample in listing:
        picture = client.get("/" + sample["url"])
        assert picture.status_code == 200
        expected = client.get("/" + sample["labels"])
        assert expected.status_code == 200
        with (
            Image.open(io.BytesIO(picture.content)) as image,
            Image.open(io.BytesIO(expected.content)) as labels,
        ):
            assert image.size == labels.size
            assert labels.mode == "P" and int(np.asarray(labels).max()) < 7  # class ids of the default model


def test_only_listed_files_are_served(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"not checked here")
    (tmp_path / "notes.txt").write_text("not a sample")
    client = page_client(tmp_path)
    assert client.get("/samples").json() == {
        "samples": [{"name": "a.jpg", "url": "samples/a.jpg", "labels": None}]
    }
    assert client.get("/samples/a.jpg").content == b"not checked here"
    for name in ("notes.txt", "..%2Fa.jpg", "%2Fetc%2Fpasswd", "b.jpg"):
        response = client.get(f"/samples/{name}")
        assert response.status_code == 404, name


def test_without_the_folder_the_list_is_empty(tmp_path: Path) -> None:
    assert find_samples(tmp_path / "absent") == {}
    assert page_client(tmp_path / "absent").get("/samples").json() == {"samples": []}


def test_page_hides_empty_pictures_and_offers_samples() -> None:
    page = page_client(SAMPLES_DIR).get("/").text
    # no <img> without a source is visible before an upload (browsers draw those as broken images)
    assert '<figure id="original-figure" hidden>' in page and '<figure id="result-figure" hidden>' in page
    assert 'fetch("samples"' in page and 'id="max-size"' in page
