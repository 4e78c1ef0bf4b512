"""POST /segment over the in-process app: every format and option, and every error code."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.imaging import rle_decode
from tests.conftest import encode, make_scene
from tests.onnx_fixtures import RGB_CLASSES, RGB_PALETTE, reference_logits

SCENE = make_scene(48, 64)
EXPECTED = reference_logits(SCENE[None])[0].argmax(0).astype(np.uint8)


def png_of(response: object) -> Image.Image:
    return Image.open(io.BytesIO(response.content))  # type: ignore[attr-defined]


def post(
    client: TestClient, params: dict[str, object] | None = None, image: bytes | None = None, **kw: object
):
    files = {"image": ("scene.png", image if image is not None else encode(SCENE), "image/png")}
    return client.post("/segment", params=params or {}, files=files, **kw)  # type: ignore[arg-type]


def test_default_is_palette_png_of_input_size_matching_direct_run(client: TestClient) -> None:
    response = post(client)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-danet-provider"] == "CPUExecutionProvider"
    assert response.headers["x-danet-model"] == "tiny"
    picture = png_of(response)
    assert picture.mode == "P" and picture.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(picture), EXPECTED)
    palette = np.asarray(picture.getpalette()[: 3 * len(RGB_PALETTE)]).reshape(-1, 3)
    np.testing.assert_array_equal(palette, np.asarray(RGB_PALETTE))


def test_raw_body_upload(client: TestClient) -> None:
    response = client.post(
        "/segment?format=index", content=encode(SCENE), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.asarray(png_of(response)), EXPECTED)


def test_raw_body_without_content_type_is_sniffed(client: TestClient) -> None:
    response = client.post("/segment?format=index", content=encode(SCENE, "JPEG", quality=98))
    assert response.status_code == 200, response.text
    assert png_of(response).size == (64, 48)
    # what `curl --data-binary @x.png` sends without -H: sniffed as well
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = client.post("/segment?format=index", content=encode(SCENE), headers=form)
    np.testing.assert_array_equal(np.asarray(png_of(response)), EXPECTED)


def test_index_format_is_grey_class_ids(client: TestClient) -> None:
    picture = png_of(post(client, {"format": "index"}))
    assert picture.mode == "L"
    np.testing.assert_array_equal(np.asarray(picture), EXPECTED)


def test_overlay_blends_with_alpha(client: TestClient) -> None:
    colours = np.asarray(RGB_PALETTE, dtype=np.float32)[EXPECTED]
    for alpha in (0.0, 0.3, 1.0):
        picture = png_of(post(client, {"format": "overlay", "alpha": alpha}))
        assert picture.mode == "RGB" and picture.size == (64, 48)
        expected = SCENE.astype(np.float32) * (1 - alpha) + colours * alpha
        assert np.abs(np.asarray(picture).astype(np.float32) - expected).max() <= 1.0


def test_json_format_stats_and_timings(client: TestClient) -> None:
    response = post(client, {"format": "json"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "tiny" and body["provider"] == "CPUExecutionProvider"
    assert (body["width"], body["height"]) == (64, 48)
    counts = np.bincount(EXPECTED.ravel(), minlength=4)
    assert [c["id"] for c in body["classes"]] == [int(i) for i in np.flatnonzero(counts)]
    for entry in body["classes"]:
        assert entry["name"] == RGB_CLASSES[entry["id"]]
        assert entry["pixels"] == counts[entry["id"]]
        assert entry["fraction"] == pytest.approx(counts[entry["id"]] / EXPECTED.size)
        assert 0.25 <= entry["mean_confidence"] <= 1.0
        assert "rle" not in entry
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)
    assert {"decode_ms", "inference_ms", "total_ms"} <= set(body["timings"])


def test_json_rle_masks_decode_to_the_labels(client: TestClient) -> None:
    body = post(client, {"format": "json", "rle": "true"}).json()
    for entry in body["classes"]:
        np.testing.assert_array_equal(rle_decode(entry["rle"]), entry["id"] == EXPECTED)


def test_accept_header_negotiates_json(client: TestClient) -> None:
    response = post(client, headers={"Accept": "application/json"})
    assert response.headers["content-type"] == "application/json"
    assert response.json()["width"] == 64
    # an explicit format wins over Accept
    response = post(client, {"format": "index"}, headers={"Accept": "application/json"})
    assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "params",
    [{"mode": "slide"}, {"flip": "true"}, {"mode": "slide", "flip": "true"}, {"scales": "1,1"}],
)
def test_slide_and_tta_agree_with_whole_image_for_a_per_pixel_model(
    client: TestClient, params: dict[str, str]
) -> None:
    picture = png_of(post(client, {"format": "index", **params}))
    np.testing.assert_array_equal(np.asarray(picture), EXPECTED)


def test_multiscale_keeps_size_and_mostly_agrees(client: TestClient) -> None:
    picture = np.asarray(png_of(post(client, {"format": "index", "scales": "0.5,1.0,1.5"})))
    assert picture.shape == (48, 64)
    assert (picture == EXPECTED).mean() > 0.9


def test_max_size_shrinks_inference_but_not_the_output(client: TestClient) -> None:
    body = post(client, {"format": "json", "max_size": 32}).json()
    assert body["inference_size"] == [24, 32]
    picture = png_of(post(client, {"format": "index", "max_size": 32}))
    assert picture.size == (64, 48)
    assert (np.asarray(picture) == EXPECTED).mean() > 0.8


def test_model_query_selects_model(client: TestClient) -> None:
    response = post(client, {"model": "plain", "format": "json"})
    assert response.status_code == 200
    assert response.json()["model"] == "plain"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_all_input_formats(client: TestClient, fmt: str) -> None:
    data = encode(SCENE, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    response = client.post("/segment?format=json", files={"image": ("x", data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (64, 48)


def test_odd_sizes_round_trip_exactly(client: TestClient) -> None:
    for height, width in ((1, 1), (3, 200), (31, 17)):
        picture = png_of(post(client, {"format": "overlay"}, image=encode(make_scene(height, width))))
        assert picture.size == (width, height)


# --- errors -------------------------------------------------------------------------------------
def error_of(response: object, status: int, code: str) -> str:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and body["error"]["code"] == code
    return str(body["error"]["message"])


def test_undecodable_image_is_400(client: TestClient) -> None:
    error_of(post(client, image=b"definitely not an image"), 400, "invalid_image")
    truncated = encode(SCENE)[:200]
    error_of(post(client, image=truncated), 400, "invalid_image")
    error_of(
        client.post("/segment", content=b"", headers={"Content-Type": "image/png"}), 400, "invalid_image"
    )


def test_unsupported_media_type_is_415(client: TestClient) -> None:
    error_of(
        client.post("/segment", content=b"hello", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    files = {"image": ("x.svg", b"<svg/>", "image/svg+xml")}
    error_of(client.post("/segment", files=files), 415, "unsupported_media_type")
    # a real image in a format we do not take (ICO), sent without a type
    ico = encode(Image.fromarray(SCENE).resize((32, 32)), "ICO")
    error_of(client.post("/segment", content=ico), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "params",
    [
        {"format": "gif"},
        {"alpha": "1.5"},
        {"alpha": "x"},
        {"mode": "tiles"},
        {"scales": "a,b"},
        {"scales": "9"},
        {"flip": "maybe"},
        {"max_size": "2"},
    ],
)
def test_bad_options_are_422(client: TestClient, params: dict[str, str]) -> None:
    error_of(post(client, params), 422, "invalid_option")


def test_slide_without_logits_output_is_422(client: TestClient) -> None:
    message = error_of(post(client, {"model": "plain", "mode": "slide"}), 422, "invalid_option")
    assert "logits" in message
    error_of(post(client, {"model": "plain", "flip": "true"}), 422, "invalid_option")


def test_multipart_without_image_field_is_422(client: TestClient) -> None:
    response = client.post("/segment", files={"picture": ("x.png", encode(SCENE), "image/png")})
    error_of(response, 422, "invalid_option")


def test_unknown_model_is_404(client: TestClient) -> None:
    message = error_of(post(client, {"model": "nope"}), 404, "model_not_found")
    assert "tiny" in message


def test_unknown_route_and_method(client: TestClient) -> None:
    error_of(client.get("/nothing-here"), 404, "not_found")
    error_of(client.get("/segment"), 405, "method_not_allowed")


def test_upload_over_limit_is_413_by_content_length(app_factory) -> None:
    client, _ = app_factory(max_upload_bytes=1000)
    error_of(
        client.post("/segment", content=b"x" * 5000, headers={"Content-Type": "image/png"}),
        413,
        "payload_too_large",
    )
    error_of(post(client, image=b"x" * 5000), 413, "payload_too_large")


def test_upload_over_limit_is_413_while_streaming(app_factory) -> None:
    client, _ = app_factory(max_upload_bytes=1000)

    def chunks():
        for _ in range(50):
            yield b"x" * 100

    response = client.post("/segment", content=chunks(), headers={"Content-Type": "image/png"})
    error_of(response, 413, "payload_too_large")
    assert "content-length" not in response.request.headers  # chunked: only counting can catch it
    # (that reading stops at the limit, before the rest arrives, is shown over a real socket in
    # test_live_server.py)


def test_too_many_pixels_is_413(app_factory) -> None:
    client, _ = app_factory(max_pixels=48 * 64 - 1)
    message = error_of(post(client), 413, "payload_too_large")
    assert "pixels" in message


def test_overloaded_is_503_with_retry_after(app_factory) -> None:
    import threading

    client, engine = app_factory(max_queue=1, retry_after_s=3)
    entry = engine.instance(None)
    release = threading.Event()
    original = entry.batcher._run_fn

    def slow(images, outputs, token):
        release.wait(10)
        return original(images, outputs, token)

    entry.batcher._run_fn = slow
    try:
        blank = np.zeros((1, 32, 32, 3), np.uint8)
        running = entry.batcher.submit(blank, ("labels",))  # taken by the worker, blocks
        deadline = __import__("time").monotonic() + 5
        while entry.batcher.depth and __import__("time").monotonic() < deadline:
            pass
        queued = entry.batcher.submit(blank, ("labels",))  # fills the queue of 1
        response = post(client)
        error_of(response, 503, "overloaded")
        assert response.headers["retry-after"] == "3"
        assert 'danet_overloaded_total{model="tiny"} 1.0' in client.get("/metrics").text
    finally:
        release.set()
    assert running.result(5)["labels"].shape == (1, 32, 32)
    assert queued.result(5)["labels"].shape == (1, 32, 32)


def test_a_request_holds_its_queue_place_from_decoding_and_gives_it_back(app_factory, monkeypatch) -> None:
    import server.segmentation.pipeline as pipeline

    client, engine = app_factory(max_queue=1)
    batcher = engine.instance(None).batcher
    seen: list[int] = []
    decode = pipeline.decode_image

    def counting(*args, **kwargs):
        seen.append(batcher._held)  # the place is taken before the image is decoded
        return decode(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_image", counting)
    assert post(client).status_code == 200
    error_of(post(client, image=b"not an image"), 400, "invalid_image")
    assert seen == [1, 1] and batcher._held == 0  # taken by the run, or given back on the error

    # a queue of one, already full of held places: refused before decoding, with the counter
    with batcher.hold():
        seen.clear()
        error_of(post(client), 503, "overloaded")
        assert seen == []
    assert batcher._held == 0 and post(client).status_code == 200


def test_unexpected_exception_is_generic_500_and_logged(
    app_factory, caplog: pytest.LogCaptureFixture
) -> None:
    client, engine = app_factory()

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    client.app.state.segmenter.segment = broken
    response = post(client)
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "secret" not in response.text
    assert any("secret internal detail" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert (
        client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
        != "bad id"
    )


def test_slow_inference_is_504(app_factory) -> None:
    import threading

    client, engine = app_factory(request_timeout_s=0.2)
    entry = engine.instance(None)
    release = threading.Event()
    original = entry.batcher._run_fn

    def slow(images, outputs, token):
        release.wait(5)
        return original(images, outputs, token)

    entry.batcher._run_fn = slow
    try:
        message = error_of(post(client), 504, "deadline_exceeded")
        assert "0.2" in message
    finally:
        release.set()


def test_multipart_field_file_is_accepted_like_image(client: TestClient) -> None:
    files = {"file": ("scene.png", encode(SCENE), "image/png")}
    response = client.post("/segment", params={"format": "index"}, files=files)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.asarray(png_of(response)), EXPECTED)


def test_multipart_with_both_image_and_file_is_422(client: TestClient) -> None:
    both = {name: ("scene.png", encode(SCENE), "image/png") for name in ("image", "file")}
    message = error_of(client.post("/segment", files=both), 422, "invalid_option")
    assert "more than one image" in message


def test_multipart_edge_cases(client: TestClient) -> None:
    png = encode(SCENE)
    boundary = "b0undary"

    def body(*parts: tuple[str, str | None]) -> bytes:
        out = b""
        for name, filename in parts:
            disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()
            out += png + b"\r\n"
        return out + f"--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    # other fields around the image are ignored; the image part arrives intact
    ok = client.post(
        "/segment?format=index", content=body(("note", None), ("file", "x.png")), headers=headers
    )
    assert ok.status_code == 200, ok.text
    np.testing.assert_array_equal(np.asarray(png_of(ok)), EXPECTED)
    # a text field named image is not an upload
    error_of(client.post("/segment", content=body(("image", None)), headers=headers), 422, "invalid_option")
    # the closing boundary missing; no boundary at all
    cut = body(("image", "x.png"))[: -len(f"--{boundary}--\r\n")]
    error_of(client.post("/segment", content=cut, headers=headers), 400, "invalid_image")
    plain = {"Content-Type": "multipart/form-data"}
    error_of(client.post("/segment", content=body(("image", "x.png")), headers=plain), 400, "invalid_image")
    many = body(*[(f"f{i}", None) for i in range(20)])
    error_of(client.post("/segment", content=many, headers=headers), 422, "invalid_option")
