"""danet-client end to end: a real CLI process against a real danet-serve process, over REST and gRPC."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.server_proc import ServerProcess
from tests.client.conftest import API_KEY
from tests.conftest import free_port
from tests.grpc.harness import OnnxReference, random_image

PROTOCOLS = ["rest", "grpc"]


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("danet-client")
    return [str(script)] if script.exists() else [sys.executable, "-m", "client.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=120)


def where(server: ServerProcess, protocol: str) -> list[str]:
    return ["--grpc", server.grpc_target] if protocol == "grpc" else ["--url", server.url]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder with images at two levels, plus one loose file elsewhere."""
    root = tmp_path_factory.mktemp("inputs")
    images = {
        "photos/a.png": random_image(1, 20, 30),
        "photos/b.jpg": random_image(2, 22, 18),
        "photos/night/c.png": random_image(3, 16, 40),
        "loose/d.webp": random_image(4, 26, 26),
    }
    for relative, pixels in images.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        params = (
            {"quality": 100}
            if target.suffix == ".jpg"
            else {"lossless": True}
            if target.suffix == ".webp"
            else {}
        )
        Image.fromarray(pixels).save(target, **params)
    (root / "photos" / "notes.txt").write_text("not an image, and not picked up")
    return root, images


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB") if picture.mode == "P" else picture)


def sent_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_segment_folders_and_files_to_label_maps(
    live_server: ServerProcess, inputs: tuple[Path, dict[str, np.ndarray]], reference: OnnxReference, tmp_path: Path,
    protocol: str,
) -> None:  # fmt: skip
    root, _ = inputs
    out = tmp_path / "out"
    run = run_cli(
        "segment", str(root / "photos"), str(root / "loose" / "d.webp"), "--output", str(out), "--format", "index",
        "--concurrency", "3", "--api-key", API_KEY, *where(live_server, protocol),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "a.png",
        "b.png",
        "d.png",
        "night/c.png",
    ]
    for source, result in [
        (root / "photos/a.png", out / "a.png"),
        (root / "photos/b.jpg", out / "b.png"),
        (root / "photos/night/c.png", out / "night/c.png"),
        (root / "loose/d.webp", out / "d.png"),
    ]:
        np.testing.assert_array_equal(decoded(result), reference.labels(sent_pixels(source)))
    assert "4/4" in run.stdout


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_json_format(
    live_server: ServerProcess, inputs: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, protocol: str
) -> None:
    root, _ = inputs
    run = run_cli(
        "segment", str(root / "photos" / "a.png"), "-o", str(tmp_path), "--format", "json",
        "--api-key", API_KEY, *where(live_server, protocol),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    document = json.loads((tmp_path / "a.json").read_text())
    assert document["model"] == "tiny" and (document["height"], document["width"]) == (20, 30)
    assert sum(c["pixels"] for c in document["classes"]) == 20 * 30


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_file_fails_the_run_but_not_the_others(
    live_server: ServerProcess, inputs: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, protocol: str
) -> None:
    root, _ = inputs
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG but truncated")
    out = tmp_path / "out"
    run = run_cli(
        "segment", str(broken), str(root / "photos" / "a.png"), "-o", str(out), "--format", "color",
        "--api-key", API_KEY, *where(live_server, protocol),
    )  # fmt: skip
    assert run.returncode == 1
    assert "broken.png" in run.stderr
    assert (out / "a.png").is_file() and not (out / "broken.png").exists()
    assert "1 failed" in run.stdout


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_api_key_fails(
    live_server: ServerProcess, inputs: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, protocol: str
) -> None:
    root, _ = inputs
    run = run_cli(
        "segment", str(root / "photos" / "a.png"), "-o", str(tmp_path), "--api-key", "nope",
        *where(live_server, protocol),
    )  # fmt: skip
    assert run.returncode == 1
    assert "API key" in run.stderr


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server_is_a_clear_message(
    inputs: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, protocol: str
) -> None:
    root, _ = inputs
    port = free_port()
    target = ["--grpc", f"127.0.0.1:{port}"] if protocol == "grpc" else ["--url", f"http://127.0.0.1:{port}"]
    run = run_cli("segment", str(root / "photos"), "-o", str(tmp_path / "out"), *target)
    assert run.returncode == 2
    assert "cannot reach" in run.stderr and str(port) in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_usage_errors(tmp_path: Path) -> None:
    missing = run_cli("segment", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "out"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    empty = run_cli("segment", str(tmp_path), "-o", str(tmp_path / "out"))
    assert empty.returncode == 2 and "no images" in empty.stderr
    both = run_cli("segment", str(tmp_path), "-o", "x", "--url", "http://a", "--grpc", "b:1")
    assert both.returncode == 2


def test_progress_bar_for_many_files(live_server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        buffer = io.BytesIO()
        Image.fromarray(random_image(i, 16, 16)).save(buffer, format="PNG")
        (folder / f"{i}.png").write_bytes(buffer.getvalue())
    run = run_cli(
        "segment",
        str(folder),
        "-o",
        str(tmp_path / "out"),
        "--api-key",
        API_KEY,
        "--grpc",
        live_server.grpc_target,
    )
    assert run.returncode == 0, run.stderr
    assert "6/6" in run.stderr  # tqdm's counter
    assert len(list((tmp_path / "out").glob("*.png"))) == 6
