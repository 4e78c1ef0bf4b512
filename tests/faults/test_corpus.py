"""The hostile / odd input corpus against a real server: a correct map or a clean 4xx, never a 5xx.

After the corpus the server must still be ready, and its peak resident memory must not have grown by
anything like a decoded bomb (the 400-megapixel PNG alone would need >= 400 MB decoded).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.server_proc import ServerProcess
from tests.faults.conftest import MAX_UPLOAD_BYTES
from tests.faults.corpus import Expect, FaultCase, build_corpus, request_args
from tests.onnx_fixtures import RGB_CLASSES, reference_logits

CORPUS = build_corpus(max_upload_bytes=MAX_UPLOAD_BYTES)
PEAK_GROWTH_LIMIT = 256 * 1024 * 1024


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 40
    assert sum(c.expect is Expect.REJECT for c in CORPUS) >= 20
    assert sum(c.expect is Expect.OK for c in CORPUS) >= 20


@pytest.fixture(scope="module")
def baseline(fault_server: ServerProcess) -> dict[str, int]:
    """Peak RSS before the corpus (after start-up and warm-up), and a reset high-water mark if possible."""
    rss = fault_server.rss_bytes()
    assert rss is not None, "cannot read the server's memory (/proc)"
    reset = fault_server.reset_peak()
    peak = fault_server.peak_rss_bytes()
    assert peak is not None
    return {"rss": rss, "peak": rss if reset else peak}


@pytest.fixture(scope="module")
def client(fault_server: ServerProcess, baseline: dict[str, int]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fault_server.http_url, timeout=60.0) as http:
        yield http


def _check_map(case: FaultCase, response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("image/png"), response.headers
    with Image.open(io.BytesIO(response.content)) as img:
        labels = np.asarray(img)
    assert labels.ndim == 2, f"index map should be single-channel, got {labels.shape}"
    assert case.expect_size is not None
    width, height = case.expect_size
    assert labels.shape == (height, width), (
        f"{case.name}: map {labels.shape[::-1]} for an image of {case.expect_size}"
    )
    assert int(labels.max()) < len(RGB_CLASSES)
    if case.reference is not None:
        logits = reference_logits(case.reference[None])[0]
        expected = logits.argmax(axis=0)
        top2 = np.sort(logits, axis=0)[-2:]
        clear = (top2[1] - top2[0]) > 1e-4  # float32 near-ties may go either way
        mismatched = int(np.count_nonzero((labels != expected) & clear))
        assert mismatched == 0, (
            f"{case.name}: {mismatched} pixels differ from the model run on the same pixels"
        )


def _check_error(case: FaultCase, response: httpx.Response) -> None:
    assert response.status_code in case.statuses, (
        f"{case.name}: expected one of {sorted(case.statuses)}, got {response.status_code}: {response.text[:300]}"
    )
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    assert "Traceback" not in response.text


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_case(case: FaultCase, client: httpx.Client, fault_server: ServerProcess) -> None:
    params = {"format": "index", **case.params}
    response = client.post("/segment", params=params, **request_args(case))  # type: ignore[arg-type]
    assert response.status_code < 500, f"{case.name}: {response.status_code} {response.text[:500]}"
    if case.expect is Expect.OK or (case.expect is Expect.EITHER and response.status_code == 200):
        assert response.status_code == 200, f"{case.name}: {response.status_code} {response.text[:300]}"
        _check_map(case, response)
    else:
        _check_error(case, response)
    assert fault_server.process is not None and fault_server.process.poll() is None, "the server died"


def test_server_still_ready_and_memory_bounded(
    client: httpx.Client, fault_server: ServerProcess, baseline: dict[str, int]
) -> None:
    assert client.get("/readyz").status_code == 200
    ok = next(c for c in CORPUS if c.name == "png-rgb")
    response = client.post("/segment", params={"format": "index"}, **request_args(ok))  # type: ignore[arg-type]
    assert response.status_code == 200
    _check_map(ok, response)
    peak = fault_server.peak_rss_bytes()
    assert peak is not None
    growth = peak - baseline["peak"]
    print(f"server RSS before corpus {baseline['rss'] / 1e6:.0f} MB, peak during corpus {peak / 1e6:.0f} MB")
    assert growth < PEAK_GROWTH_LIMIT, f"peak RSS grew by {growth / 1e6:.0f} MB during the corpus"
