"""danet-client's evaluation presets (--tta with its sizes), --max-size and output names, over both protocols.

The served model is a per-pixel classifier, so any resize changes the labels of a noise picture: a preset
or a size that did not reach the server shows up as the plain map.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.server_proc import ServerProcess
from client import DanetClient
from client._grpc import request_from
from client._inputs import Image as ClientImage
from client._inputs import options_from
from client.cli import plan_jobs
from tests.client.conftest import API_KEY
from tests.client.test_client_cli import cli_command, run_cli, where
from tests.client.test_client_library import connect
from tests.grpc.harness import random_image

PROTOCOLS = ["rest", "grpc"]
PICTURE = random_image(11, 40, 56)


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def labels_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture)


def rest_direct(server: ServerProcess, **query: str) -> httpx.Response:
    """POST /segment without the client library: what the client's answers must equal."""
    response = httpx.post(
        f"{server.url}/segment",
        params={"format": "index", **query},
        content=png(PICTURE),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


@pytest.fixture(scope="module")
def plain(live_server: ServerProcess) -> np.ndarray:
    return labels_of(rest_direct(live_server).content)


CASES = [
    ({"tta": "official", "base_size": 16, "crop_size": 16}, {"tta": "official", "base_size": "16", "crop_size": "16"}),
    (
        {"tta": "mmseg", "base_size": (48, 24), "crop_size": (16, 24), "stride": 8},
        {"tta": "mmseg", "base_size": "48x24", "crop_size": "16x24", "stride": "8"},
    ),
    ({"max_size": 12}, {"max_size": "12"}),
]  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("kwargs", "query"), CASES, ids=["official", "mmseg", "max_size"])
def test_presets_and_max_size_reach_the_server(
    live_server: ServerProcess, plain: np.ndarray, protocol: str, kwargs: dict[str, object], query: dict[str, str]
) -> None:  # fmt: skip
    expected = labels_of(rest_direct(live_server, **query).content)
    assert not np.array_equal(expected, plain), "the case must change the map, or it proves nothing"
    with connect(live_server, protocol, api_key=API_KEY, timeout=60) as client:
        result = client.segment(PICTURE, format="index", **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(result.labels(), expected)
    assert (result.height, result.width) == PICTURE.shape[:2]


@pytest.mark.parametrize(("flip", "applied"), [(None, True), (False, False), (True, True)])
def test_flip_unset_keeps_the_official_default(
    live_server: ServerProcess, flip: bool | None, applied: bool
) -> None:
    with DanetClient(live_server.url, api_key=API_KEY, timeout=60) as client:
        result = client.segment(PICTURE, format="json", tta="official", crop_size=16, flip=flip)
    assert result.document is not None
    assert result.document["tta"]["flip"] is applied
    request = request_from(ClientImage(pixels=PICTURE), options_from(
        format="index", model=None, alpha=None, mode=None, scales=None, flip=flip, max_size=None, tta="official",
    ))  # fmt: skip
    assert request.options.HasField("flip") is (flip is not None)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_preset_options(live_server: ServerProcess, tmp_path: Path, protocol: str) -> None:
    source = tmp_path / "noise.png"
    source.write_bytes(png(PICTURE))
    expected = labels_of(rest_direct(live_server, tta="mmseg", crop_size="16x24", stride="8", scales="0.5,1",
                                     flip="true").content)  # fmt: skip
    run = run_cli(
        "segment", str(source), "-o", str(tmp_path / "out"), "--format", "index", "--api-key", API_KEY,
        "--tta", "mmseg", "--crop-size", "16x24", "--stride", "8", "--scales", "0.5,1",
        "--flip", *where(live_server, protocol),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(labels_of((tmp_path / "out" / "noise.png").read_bytes()), expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_max_size(live_server: ServerProcess, tmp_path: Path, protocol: str) -> None:
    source = tmp_path / "noise.png"
    source.write_bytes(png(PICTURE))
    expected = labels_of(rest_direct(live_server, max_size="12").content)
    run = run_cli(
        "segment", str(source), "-o", str(tmp_path / "out"), "--format", "index", "--max-size", "12",
        "--api-key", API_KEY, *where(live_server, protocol),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(labels_of((tmp_path / "out" / "noise.png").read_bytes()), expected)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--base-size", "16"], "apply only with tta"),
        (["--tta", "official", "--mode", "slide"], "mode applies"),
        (["--tta", "official", "--crop-size", "0"], "positive"),
        (["--tta", "other"], "invalid choice"),
        (["--max-size", "0"], "max_size"),
    ],
)
def test_cli_option_errors_before_any_request(tmp_path: Path, args: list[str], words: str) -> None:
    source = tmp_path / "a.png"
    source.write_bytes(png(PICTURE))
    # No server at this URL: a usage error must come before any connection attempt.
    run = run_cli("segment", str(source), "-o", str(tmp_path / "out"), "--url", "http://127.0.0.1:9", *args)
    assert run.returncode == 2
    assert words in run.stderr and "cannot reach" not in run.stderr and "Traceback" not in run.stderr


def test_names_differing_only_by_extension_keep_it(tmp_path: Path) -> None:
    for name in ("street.png", "street.jpg", "park.png", "sub/street.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "park.png").write_bytes(b"x")
    jobs = plan_jobs([tmp_path / "in", tmp_path / "other" / "park.png"], tmp_path / "out", ".png")
    names = {
        str(job.source.relative_to(tmp_path)): str(job.target.relative_to(tmp_path / "out")) for job in jobs
    }
    assert names == {
        "in/park.png": "park.png",
        "in/street.jpg": "street.jpg.png",
        "in/street.png": "street.png.png",
        "in/sub/street.png": "sub/street.png",
        "other/park.png": "park-1.png",
    }


def test_help_lists_the_preset_options() -> None:
    text = subprocess.run(
        [*cli_command(), "segment", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for flag in ("--tta", "--base-size", "--crop-size", "--stride", "--scales", "--flip", "--max-size"):
        assert flag in text
