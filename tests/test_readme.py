"""The README's shell blocks run, in order, as a new user would run them on a fresh clone.

Each ```bash block runs unless an HTML comment right above it says otherwise:
``<!-- readme-check: server -->`` starts the server (in the background, on free ports, once), and
``<!-- readme-check: skip (REASON) -->`` skips it; every skip must state its reason. The blocks run in a
scratch folder that links the repository's entries (so outputs such as ``-o color.png`` land there), with
``.venv/bin`` of the running interpreter's environment. ``localhost:8000``/``localhost:8001`` become the
server's free ports. ``make`` runs for real, except that the environment steps of ``make run`` are taken as
done (``-o .venv/.runtime``): the test suite already runs inside that environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-check: (?P<mark>[^>]*?) -->\n)?```bash\n(?P<body>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    line: int
    mark: str
    body: str


def readme_blocks(text: str) -> list[Block]:
    return [
        Block(text.count("\n", 0, m.start()) + 1, (m.group("mark") or "run").strip(), m.group("body"))
        for m in _BLOCK.finditer(text)
    ]


def test_every_block_is_run_or_skipped_with_a_reason() -> None:
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 10
    for block in blocks:
        assert block.mark == "run" or block.mark == "server" or re.fullmatch(r"skip \(.{5,}\)", block.mark), (
            f"README.md:{block.line}: unknown mark {block.mark!r}"
        )
    assert [b.mark for b in blocks].count("server") == 1


def _scratch(tmp_path: Path) -> Path:
    """A folder that looks like the clone: every top-level entry linked, outputs written beside them."""
    work = tmp_path / "clone"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git",):
            (work / entry.name).symlink_to(entry)
    venv = Path(sys.prefix)
    if (work / ".venv").exists() and (work / ".venv").resolve() != venv.resolve():
        (work / ".venv").unlink()
        (work / ".venv").symlink_to(venv)
    elif not (work / ".venv").exists():
        (work / ".venv").symlink_to(venv)
    return work


def _localise(body: str, http: int, grpc: int) -> str:
    return body.replace("localhost:8000", f"localhost:{http}").replace("localhost:8001", f"localhost:{grpc}")


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"make run exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not become ready:\n{log.read_text()[-3000:]}")


def test_readme_shell_blocks_run_in_order(tmp_path: Path) -> None:
    work = _scratch(tmp_path)
    http, grpc = free_port(), free_port()
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DANET_API_KEY", None)
    env["DANET_URL"] = f"http://localhost:{http}"  # danet-client's default server, as 8000 is in the README
    server: subprocess.Popen[bytes] | None = None
    log = tmp_path / "server.log"
    ran = 0
    try:
        for block in readme_blocks(README.read_text()):
            if block.mark.startswith("skip"):
                continue
            if block.mark == "server":
                command = block.body.split("#", 1)[0].strip()
                assert command == "make run", f"README.md:{block.line}: the server block must be `make run`"
                args = f"--host 127.0.0.1 --http-port {http} --grpc-port {grpc} --log-format text"
                with log.open("wb") as sink:
                    server = subprocess.Popen(
                        ["make", "--no-print-directory", "-o", ".venv/.runtime", "run", f"ARGS={args}"],
                        cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                _wait_ready(f"http://127.0.0.1:{http}", server, log)
                continue
            assert server is not None, f"README.md:{block.line}: a block runs before the server is started"
            run = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", _localise(block.body, http, grpc)],
                cwd=work, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert run.returncode == 0, (
                f"README.md:{block.line} failed ({run.returncode}):\n{block.body}\n"
                f"stdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr[-3000:]}"
            )
            ran += 1
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
    assert ran >= 6
    # what the blocks promised to write is there
    assert (work / "street-color.png").stat().st_size > 0
    assert len(list((work / "masks").glob("*.png"))) == 4
    assert (work / "my-model.onnx").is_file() and (work / "repo" / "my-model" / "1" / "model.onnx").is_file()
