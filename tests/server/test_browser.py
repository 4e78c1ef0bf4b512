"""The web page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright): pick an image, the
overlay and the legend with fractions appear; the page loads nothing from outside the server."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.server_proc import ServerProcess
from tests.conftest import encode, make_scene, server_process

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"
    ),
]


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def test_upload_shows_overlay_and_legend(live_server: ServerProcess, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    scene = make_scene(48, 64)
    picture = tmp_path / "scene.png"
    picture.write_bytes(encode(scene))
    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.on(
                "request",
                lambda request: (
                    outside.append(request.url)
                    if not request.url.startswith((live_server.url, "blob:", "data:"))
                    else None
                ),
            )
            page.goto(live_server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            assert "tiny v1" in page.locator("#model").inner_text()
            assert "ready" in page.locator("#status").inner_text()
            page.locator("#alpha").fill("0.6")
            page.locator("#file").set_input_files(str(picture))
            page.wait_for_function("document.querySelectorAll('#legend tbody tr').length > 0", timeout=30_000)
            page.wait_for_function(
                "document.getElementById('result').complete && document.getElementById('result').naturalWidth > 0"
            )
            size = page.evaluate(
                "[document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]"
            )
            assert size == [64, 48]
            rows = page.locator("#legend tbody tr").all_inner_texts()
            names = {row.split("\t")[1].strip() for row in rows}
            assert names == {"background", "red", "green", "blue"}
            fractions = [float(row.split("\t")[3].replace("%", "").strip()) for row in rows]
            assert abs(sum(fractions) - 100.0) < 0.5
            # the displayed result is the overlay: read its pixels back through a canvas
            data_url = page.evaluate(
                """() => { const img = document.getElementById('result');
                           const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
                           c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); }"""
            )
            shown = np.asarray(
                Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
            )
            assert shown.shape == (48, 64, 3)
            assert np.abs(shown.astype(int) - scene.astype(int)).mean() > 5  # colours blended over the input
            assert "overlay · v1" in page.locator("#result-caption").inner_text()
        finally:
            browser.close()
    assert outside == []


def test_api_key_prompted_page(tmp_path: Path, tiny_onnx: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = server_process([tiny_onnx], "--api-key", "page-key").start()
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                page = browser.new_page()
                page.goto(server.url + "/")
                page.wait_for_function("document.getElementById('error').textContent.includes('API key')")
                page.locator("#apikey").fill("page-key")
                page.locator("#apikey").dispatch_event("change")
                page.wait_for_function("document.querySelectorAll('#model option').length > 0")
                picture = tmp_path / "s.png"
                picture.write_bytes(encode(make_scene(24, 24)))
                page.locator("#file").set_input_files(str(picture))
                page.wait_for_function(
                    "document.querySelectorAll('#legend tbody tr').length > 0", timeout=30_000
                )
            finally:
                browser.close()
    finally:
        assert server.stop() == 0
