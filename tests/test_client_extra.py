"""The README's install line for Triton's client leaves the server working.

A bare ``pip install tritonclient[grpc]`` picks a release whose grpc extra downgrades protobuf below what
the server's generated stubs need, and ``danet-serve`` then fails at start. The ``client`` extra pins the
two together. This test resolves the README's exact line from scratch (``pip --dry-run --ignore-installed``:
what a new user's pip would pick), checks that the protobuf it picks satisfies the server's own requirement,
then installs those versions into a throwaway environment layered over this one, starts the server from
it and asks it for a segmentation with the tritonclient installed there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import httpx
from packaging.requirements import Requirement

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
_INSTALL_LINE = re.compile(r"^\.venv/bin/pip install -e '\.\[client\]'$", re.M)


def server_protobuf_requirement() -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "protobuf"]
    assert len(found) == 1
    return found[0]


def test_the_readme_line_is_the_client_extra() -> None:
    assert _INSTALL_LINE.search((REPO / "README.md").read_text()), "the README's install line changed"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {Requirement(r).name for r in extras["client"]}
    assert {"tritonclient", "protobuf"} <= names


def test_installing_the_client_extra_keeps_the_server_working(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    resolve = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-e", f"{REPO}[client]"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resolve.returncode == 0, resolve.stderr[-3000:]
    picked = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert "tritonclient" in picked
    needed = server_protobuf_requirement()
    assert needed.specifier.contains(picked["protobuf"]), (
        f"the client extra resolves protobuf {picked['protobuf']}"
    )

    # A throwaway environment that sees this one's packages underneath its own.
    layer = tmp_path / "layer"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(layer)], check=True, timeout=120)
    python = layer / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "underlay.pth").write_text(sysconfig.get_paths()["purelib"] + "\n" + str(REPO) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         f"tritonclient=={picked['tritonclient']}", f"protobuf=={picked['protobuf']}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]

    http, grpc = free_port(), free_port()
    server = subprocess.Popen(
        [str(python), "-m", "server.main", "--host", "127.0.0.1", "--http-port", str(http),
         "--grpc-port", str(grpc), "--log-format", "text"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        log = server.stdout.read() if server.poll() is not None and server.stdout else ""
        assert server.poll() is None, f"danet-serve did not start next to the client extra:\n{log}"
        ask = subprocess.run(
            [str(python), "-c", _TRITON_CALL, f"127.0.0.1:{grpc}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ask.returncode == 0, ask.stderr[-3000:]
        assert ask.stdout.split() == ["(1,24,32)", picked["protobuf"]]
    finally:
        server.terminate()
        server.wait(timeout=60)


_TRITON_CALL = """
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf import __version__ as protobuf_version

client = grpcclient.InferenceServerClient(sys.argv[1])
image = grpcclient.InferInput("image", [1, 24, 32, 3], "UINT8")
image.set_data_from_numpy(np.zeros((1, 24, 32, 3), np.uint8))
result = client.infer("danet-synthetic", [image], outputs=[grpcclient.InferRequestedOutput("labels")])
print(str(result.as_numpy("labels").shape).replace(" ", ""), protobuf_version)
"""
