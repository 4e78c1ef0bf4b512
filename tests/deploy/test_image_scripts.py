"""The helper scripts baked into the images: requirement selection, health check, build-time gate."""

from __future__ import annotations

import http.server
import importlib
import os
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from common.contract import DEFAULT_ONNX
from tests import static_checks as sc
from tests.conftest import free_port
from tests.deploy.conftest import load_image_script

runtime_requirements = load_image_script("runtime_requirements")
healthcheck = load_image_script("healthcheck")
check_image = load_image_script("check_image")
wheelhouse = load_image_script("wheelhouse")

SCRIPTS = sc.DEPLOY_DIR / "docker"


def _project() -> dict:
    with (sc.REPO_ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]


def _requires_dist() -> list[str]:
    """pyproject's dependencies as a wheel's Requires-Dist lines (extras carry an ``extra ==`` marker)."""
    return wheelhouse.pyproject_requires_dist()


def _names(lines: list[str]) -> list[str]:
    return [Requirement(line).name.lower() for line in lines]


def test_gpu_flavour_brings_the_cuda_libraries_and_cublas() -> None:
    # onnxruntime-gpu's extras cover CUDA runtime, NVRTC, cuFFT, cuRAND and cuDNN, not cuBLAS, which its
    # CUDA provider links (libcublas.so.13, libcublasLt.so.13).
    lines = runtime_requirements.select_requirements(_requires_dist(), "gpu")
    onnxruntime = Requirement(lines[0])
    assert onnxruntime.name == "onnxruntime-gpu" and onnxruntime.extras == {"cuda", "cudnn"}
    cublas = [Requirement(line) for line in lines if Requirement(line).name == "nvidia-cublas"]
    assert len(cublas) == 1 and "13.0" in cublas[0].specifier and "14.0" not in cublas[0].specifier
    assert not any(
        name.startswith("nvidia-")
        for name in _names(runtime_requirements.select_requirements(_requires_dist(), "cpu"))
    )


@pytest.mark.parametrize(
    ("flavour", "wanted", "unwanted"),
    [("cpu", "onnxruntime", "onnxruntime-gpu"), ("gpu", "onnxruntime-gpu", "onnxruntime")],
)
def test_flavour_gets_exactly_its_onnxruntime(flavour: str, wanted: str, unwanted: str) -> None:
    names = _names(runtime_requirements.select_requirements(_requires_dist(), flavour))
    assert names.count(wanted) == 1 and unwanted not in names


def test_runtime_lists_hold_the_base_dependencies_and_no_extras() -> None:
    base = {Requirement(line).name.lower() for line in _project()["dependencies"]} - {"onnxruntime-gpu"}
    for flavour in ("cpu", "gpu"):
        names = set(_names(runtime_requirements.select_requirements(_requires_dist(), flavour)))
        assert base - {"onnxruntime"} <= names
        assert "torch" not in names and "pytest" not in names and "onnx" not in names


def test_export_extra_adds_torch_pinned_as_in_pyproject() -> None:
    lines = runtime_requirements.select_requirements(_requires_dist(), "cpu", ["export"])
    torch = [line for line in lines if Requirement(line).name == "torch"]
    pinned = [line for line in _project()["optional-dependencies"]["export"] if line.startswith("torch")]
    assert torch == pinned
    assert "pytest" not in _names(lines)


def test_version_specifier_survives_the_swap() -> None:
    lines = [
        "numpy>=1.26",
        "onnxruntime-gpu>=1.23; sys_platform == 'linux'",
        "onnxruntime>=1.20; sys_platform != 'linux'",
    ]
    assert runtime_requirements.select_requirements(lines, "gpu")[0] == "onnxruntime-gpu[cuda,cudnn]>=1.23"
    assert runtime_requirements.select_requirements(lines, "cpu")[0] == "onnxruntime>=1.20"


def test_missing_onnxruntime_and_unknown_flavour_are_errors() -> None:
    with pytest.raises(ValueError, match="no onnxruntime"):
        runtime_requirements.select_requirements(["numpy"], "cpu")
    with pytest.raises(ValueError, match="flavour"):
        runtime_requirements.select_requirements(["onnxruntime"], "tpu")


def test_cli_reads_a_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "danet_serve-0.1.0-py3-none-any.whl"
    metadata = "Metadata-Version: 2.1\nName: danet-serve\n" + "".join(
        f"Requires-Dist: {line}\n" for line in _requires_dist()
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("danet_serve-0.1.0.dist-info/METADATA", metadata)
    proc = subprocess.run(
        [sys.executable, SCRIPTS / "runtime_requirements.py", wheel, "--flavour", "cpu"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.splitlines() == runtime_requirements.select_requirements(_requires_dist(), "cpu")


class _Status(http.server.BaseHTTPRequestHandler):
    status = {"/readyz": 503, "/healthz": 200}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status.get(self.path, 404))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture()
def status_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _run_healthcheck(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DANET_HTTP_PORT": str(port)}
    return subprocess.run(
        [sys.executable, SCRIPTS / "healthcheck.py", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_follows_readyz_and_the_port_setting(
    status_server: int, setting_env_names: set[str]
) -> None:
    assert "DANET_HTTP_PORT" in setting_env_names  # the script reads the server's own port setting
    not_ready = _run_healthcheck(status_server)
    assert not_ready.returncode == 1 and "503" in not_ready.stderr
    assert _run_healthcheck(status_server, "/healthz").returncode == 0
    _Status.status = {**_Status.status, "/readyz": 200}
    try:
        assert _run_healthcheck(status_server).returncode == 0
    finally:
        _Status.status = {**_Status.status, "/readyz": 503}


def test_healthcheck_fails_when_nothing_listens() -> None:
    proc = _run_healthcheck(free_port())  # bound and released: nothing listens there
    assert proc.returncode == 1 and "unreachable" in proc.stderr


def test_image_gate_rejects_this_development_environment() -> None:
    # The dev venv has torch (export extra): exactly what the runtime images must not carry.
    problems = check_image.problems("cpu")
    assert any(line.startswith("torch is installed") for line in problems)
    model_missing = any("default model missing" in line for line in problems)
    assert model_missing == (not DEFAULT_ONNX.is_file())


def _block_cache_at(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the gate at ``directory``/libdanet_blockcache.so (the name the probe looks for in its maps)."""
    allocator = importlib.import_module("server.allocator")
    library = directory / allocator.BLOCK_CACHE.name
    monkeypatch.setattr(allocator, "BLOCK_CACHE", library)
    monkeypatch.delenv("DANET_CPU_BLOCK_CACHE", raising=False)
    return library


def test_block_cache_gate_passes_a_built_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler to build the block cache with")
    library = _block_cache_at(tmp_path, monkeypatch)
    subprocess.run(["sh", sc.REPO_ROOT / "server" / "native" / "build.sh", library], check=True)
    assert check_image.block_cache_problems() == []


def test_block_cache_gate_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = _block_cache_at(tmp_path, monkeypatch)
    (missing,) = check_image.block_cache_problems()
    assert missing.startswith(f"block cache missing: {library}")
    library.write_bytes(b"")  # not a shared library: the loader refuses to preload it
    (broken,) = check_image.block_cache_problems()
    assert broken.startswith("block cache preloaded but not working") and "cannot be preloaded" in broken
    monkeypatch.setenv("DANET_CPU_BLOCK_CACHE", "false")
    (off,) = check_image.block_cache_problems()
    assert off.startswith("the default settings do not preload the block cache")


def test_gpu_gate_lets_only_the_driver_be_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    links = {
        "/x/libonnxruntime_providers_cuda.so": {
            "libcuda.so.1": None,  # the host's driver, mounted by the container toolkit
            "libcublas.so.13": None,
            "libcudart.so.13": "/x/nvidia/cu13/lib/libcudart.so.13",
        },
        "/x/nvidia/cudnn/lib/libcudnn.so.9": {"libcudnn.so.9": None},  # the file itself is absent
    }
    monkeypatch.setattr(check_image, "gpu_libraries", lambda: links)
    gpu = [line for line in check_image.problems("gpu") if "/x/" in line]
    assert len(gpu) == 2, gpu
    assert "links libcublas.so.13, which is not found" in gpu[0]
    assert gpu[1].endswith("libcudnn.so.9 is missing (its wheel is not installed)")
    assert not any("/x/" in line for line in check_image.problems("cpu"))


def test_ldd_reads_links_and_refuses_to_pass_without_looking(tmp_path: Path) -> None:
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    extension = next(capi.glob("onnxruntime_pybind11_state*.so"))
    links = check_image.ldd(extension)
    assert links["libc.so.6"] is not None and Path(links["libc.so.6"]).name.startswith("libc")
    assert check_image.ldd(tmp_path / "libabsent.so.1") == {"libabsent.so.1": None}
    not_elf = tmp_path / "libtext.so"
    not_elf.write_text("not a shared library")
    with pytest.raises(RuntimeError, match="ldd"):
        check_image.ldd(not_elf)


def test_wheelhouse_covers_the_builder_and_each_image_with_one_onnxruntime() -> None:
    names = _names(wheelhouse.requirement_lines(["cpu"], ["export"]))
    assert {"setuptools", "wheel", "packaging", "torch", "onnx", "onnxruntime", "fastapi"} <= set(names)
    assert "onnxruntime-gpu" not in names and len(names) == len(set(names))
    gpu = _names(wheelhouse.requirement_lines(["gpu"], []))
    assert "onnxruntime-gpu" in gpu and "nvidia-cublas" in gpu


@pytest.mark.parametrize(
    ("filename", "directory"),
    [
        ("Pillow-13.0.0-cp311-cp311-manylinux_2_28_x86_64.whl", "pillow"),
        ("typing_extensions-4.16.0-py3-none-any.whl", "typing-extensions"),
        ("swagger_ui_bundle-1.1.0.tar.gz", "swagger-ui-bundle"),
        ("zope.event-5.0.tar.gz", "zope-event"),
    ],
)
def test_wheelhouse_files_land_in_their_pep503_directory(filename: str, directory: str) -> None:
    assert wheelhouse.project_dir_name(filename) == directory
