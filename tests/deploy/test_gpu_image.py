"""The gpu image built for real and checked inside, on a machine without a GPU.

``docker compose build danet-gpu`` (the compose file's own service, tag ``danet-serve:gpu``) on the
stand-in base from the host wheelhouse, as tests/deploy/test_image.py builds the cpu image. Then one
container runs tests/deploy/gpu_image_probe.py: onnxruntime offers the CUDA provider, every library the
CUDA provider and cuDNN link resolves except the driver's ``libcuda.so.1``, and ``danet-serve`` without a
GPU falls back to the CPU provider saying so, or refuses to start with ``DANET_REQUIRE_GPU=true``.
Skipped, with the reason, where no Docker engine answers.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import static_checks as sc
from tests.deploy import docker_env as de

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]

# Measured 2026-12-03: see docs/deploy.md ("Images"). The CUDA libraries are most of it.
SIZE_BUDGET_BYTES = 3_500 * 1000**2
PROBE = Path(__file__).with_name("gpu_image_probe.py")
CHECK_IMAGE = de.DOCKER_DIR / "check_image.py"
# What onnxruntime-gpu's CUDA provider links besides the C library, the driver and the C++ runtime.
CUDA_LIBRARIES = ("libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13")


@pytest.fixture(scope="module")
def probe(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    reason = de.unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    watch = de.Stopwatch()
    de.build_project(
        f"danet-gpu-test-{os.getpid()}", {}, ["danet-gpu"], watch, profiles=["gpu"], timeout=2400
    )
    de.prune_dangling()
    with watch.lap("probe"):
        proc = de.docker(
            "run", "--rm", "--network", "none", "--entrypoint", "python",
            "-v", f"{PROBE}:/probe/probe.py:ro", "-v", f"{CHECK_IMAGE}:/probe/check_image.py:ro",
            de.GPU_IMAGE, "/probe/probe.py", timeout=600,
        )  # fmt: skip
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    size = _inspect()["Size"]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stderr.write(f"\ndocker gpu: {watch}; {de.GPU_IMAGE} {size / 1e6:.0f} MB\n")
    yield report
    if request.session.testsfailed:
        with capture.global_and_fixture_disabled():
            sys.stderr.write(json.dumps({k: v for k, v in report.items() if k != "libraries"})[-8000:] + "\n")


def _inspect() -> dict[str, Any]:
    state: dict[str, Any] = json.loads(de.docker("image", "inspect", de.GPU_IMAGE).stdout)[0]
    return state


def test_gpu_image_is_the_compose_tag_non_root_with_a_healthcheck(probe: dict[str, Any]) -> None:
    image = _inspect()
    assert image["Config"]["User"] == "10001:10001"
    assert image["Config"]["Entrypoint"] == ["danet-serve"]
    assert image["Config"]["Healthcheck"]["Test"][-1] == "/readyz"
    assert image["Size"] <= SIZE_BUDGET_BYTES, f"{de.GPU_IMAGE} is {image['Size'] / 1e6:.0f} MB"
    compose_image = sc.compose_config("gpu")["services"]["danet-gpu"]["image"]
    assert compose_image == de.GPU_IMAGE


def test_onnxruntime_offers_the_cuda_provider(probe: dict[str, Any]) -> None:
    assert "CUDAExecutionProvider" in probe["providers"], probe["providers"]
    assert probe["problems"] == []  # the build-time gate, run again in the finished image


def test_every_cuda_library_resolves_except_the_driver(probe: dict[str, Any]) -> None:
    libraries: dict[str, dict[str, str | None]] = probe["libraries"]
    provider = next(links for path, links in libraries.items() if path.endswith("providers_cuda.so"))
    for name in CUDA_LIBRARIES:
        resolved = provider.get(name)
        assert resolved is not None and "/nvidia/" in resolved, (name, resolved)
    assert any(Path(path).name == "libcudnn.so.9" for path in libraries), sorted(libraries)
    unresolved = {name for links in libraries.values() for name, path in links.items() if path is None}
    assert unresolved <= {"libcuda.so.1"}, unresolved
    # The wheels' folders are in the loader's configuration: no LD_LIBRARY_PATH needed.
    assert any(folder.endswith("/nvidia/cu13/lib") for folder in probe["ld_so_conf"]), probe["ld_so_conf"]
    assert any(folder.endswith("/nvidia/cudnn/lib") for folder in probe["ld_so_conf"]), probe["ld_so_conf"]


def test_without_a_gpu_the_server_falls_back_to_cpu_and_says_so(probe: dict[str, Any]) -> None:
    run = probe["fallback"]
    assert run["ready"], run["log"][-3000:]
    # One line names the provider and why (no GPU: the CUDA providers are skipped before onnxruntime tries).
    fallback = [
        line for line in run["log"].splitlines() if "active execution provider CPUExecutionProvider" in line
    ]
    assert fallback and "CUDA" in fallback[0], run["log"][-3000:]
    assert "EP Error" not in run["log"] and "[E:onnxruntime" not in run["log"], run["log"][-3000:]
    assert run["exit"] == 0, run["log"][-3000:]  # SIGTERM: drained and exited cleanly


def test_require_gpu_refuses_to_start_without_a_gpu(probe: dict[str, Any]) -> None:
    run = probe["require_gpu"]
    assert run["exit"] not in (0, None), run["log"][-3000:]
    assert "require_gpu is set" in run["log"], run["log"][-3000:]
    assert not run["ready"]
