"""The images built and run for real: `docker compose up` with the repository's own compose file.

One module-scoped project: build the ``cpu`` and ``export`` targets on the stand-in base
(deploy/docker/local-base.sh) from the host wheelhouse, bring the cpu service up until Compose reports it
healthy, then talk to it only through the ports Docker published. The tests run in file order: the
export test restarts the service on the exported model, and the SIGTERM test stops it for good.
Skipped, with the reason, where no Docker engine answers.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from PIL import Image

from bench.images import bench_image, encode
from common.contract import DEFAULT_MODEL_NAME, DEFAULT_ONNX, INPUT_IMAGE, OUTPUT_LABELS
from tests import static_checks as sc
from tests.deploy import docker_env as de
from tests.load.test_sigterm import Attempt, _http_once, _summary

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

SIZE_GOAL_BYTES = 700 * 1000**2
EXPORTED = "exported"  # the export service's output file name (without .onnx) = the served model's name
IMAGE = bench_image(61, 97, seed=3)  # height x width, deliberately odd


@dataclass
class Project:
    compose: de.ComposeProject
    watch: de.Stopwatch

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.compose.port(8000)}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.compose.port(8001)}"


@pytest.fixture(scope="module")
def project(request: pytest.FixtureRequest) -> Iterator[Project]:
    reason = de.unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    watch = de.Stopwatch()
    env = {
        "DANET_PUBLISH_HTTP": "127.0.0.1:0",
        "DANET_PUBLISH_GRPC": "127.0.0.1:0",
        "EXPORT_CHECKPOINT_DIR": str(sc.REPO_ROOT / "models" / "weights"),
        "EXPORT_CHECKPOINT": "danet-synthetic.safetensors",
        "EXPORT_OUTPUT": f"{EXPORTED}.onnx",
    }
    compose = de.build_project(f"danet-test-{os.getpid()}", env, ["danet", "export"], watch)
    try:
        with watch.lap("healthy"):
            compose.up()
        yield Project(compose, watch)
    finally:
        logs = compose.logs()
        compose.down()
        de.prune_dangling()
        size = json.loads(de.docker("image", "inspect", de.CPU_IMAGE).stdout)[0]["Size"]
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            sys.stderr.write(f"\ndocker: {watch}; {de.CPU_IMAGE} {size / 1e6:.0f} MB\n")
        if request.session.testsfailed:
            sys.stderr.write(logs[-6000:])


def _labels_here(image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    labels: np.ndarray = session.run([OUTPUT_LABELS], {INPUT_IMAGE: image[None]})[0]
    return labels


def test_cpu_image_is_small_and_carries_no_torch_or_toolchain(project: Project) -> None:
    size = json.loads(de.docker("image", "inspect", de.CPU_IMAGE).stdout)[0]["Size"]
    assert size <= SIZE_GOAL_BYTES, f"{de.CPU_IMAGE} is {size / 1e6:.0f} MB"
    listed = de.docker("run", "--rm", "--entrypoint", "pip", de.CPU_IMAGE, "list", "--format", "json").stdout
    names = {item["name"].lower() for item in json.loads(listed)}
    assert {"danet-serve", "onnxruntime"} <= names
    assert not names & {"torch", "onnxruntime-gpu", "onnx", "tritonclient", "setuptools-scm", "cython"}
    tools = "gcc cc g++ clang make ld as apt-get-build-dep"
    found = de.docker(
        "run", "--rm", "--entrypoint", "sh", de.CPU_IMAGE, "-c", f"command -v {tools}", check=False
    )
    assert found.stdout.strip() == "", f"build tools in the image: {found.stdout.split()}"


def test_compose_service_is_healthy_non_root_and_read_only(project: Project) -> None:
    state = project.compose.inspect()
    assert state["State"]["Health"]["Status"] == "healthy"
    assert state["Config"]["User"] == "10001:10001"
    assert state["HostConfig"]["ReadonlyRootfs"] is True  # compose asks for read_only: true
    container = project.compose.container()
    assert de.docker("exec", container, "id", "-u").stdout.strip() == "10001"
    denied = de.docker("exec", container, "touch", "/home/danet/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    de.docker("exec", container, "touch", "/tmp/x")  # the tmpfs the compose file mounts
    # Only the CPU build of onnxruntime is inside, and the image asks for nothing else.
    assert "GPU FALLBACK" not in project.compose.logs()


def test_server_runs_with_the_block_cache_preloaded(project: Project) -> None:
    # PID 1 is danet-serve after it re-executed itself with the library the native stage built.
    maps = de.docker("exec", project.compose.container(), "cat", "/proc/1/maps").stdout
    assert "/libdanet_blockcache.so" in maps


def test_segment_returns_a_colour_png_of_the_input_size(project: Project) -> None:
    response = httpx.post(
        f"{project.http}/segment", files={"image": ("scene.png", encode(IMAGE), "image/png")}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-danet-model"] == DEFAULT_MODEL_NAME
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (IMAGE.shape[1], IMAGE.shape[0])
    colours = picture.convert("RGB").getcolors()  # palette or RGB PNG: class colours, not class ids
    assert colours is not None and len(colours) > 1


def test_tritonclient_http_through_the_published_port(project: Project) -> None:
    client = triton_http.InferenceServerClient(url=project.http.removeprefix("http://"))
    image = triton_http.InferInput(INPUT_IMAGE, [1, *IMAGE.shape], "UINT8")
    image.set_data_from_numpy(IMAGE[None])
    result = client.infer(
        DEFAULT_MODEL_NAME, [image], outputs=[triton_http.InferRequestedOutput(OUTPUT_LABELS)]
    )
    np.testing.assert_array_equal(result.as_numpy(OUTPUT_LABELS), _labels_here(IMAGE))


# tritonclient.grpc registers `inference.*` protobuf symbols that our own stubs define: its own process.
GRPC_PROBE = """
import sys, numpy as np, tritonclient.grpc as t
image = np.load(sys.argv[2])
client = t.InferenceServerClient(url=sys.argv[1])
inp = t.InferInput("image", list(image.shape), "UINT8")
inp.set_data_from_numpy(image)
result = client.infer(sys.argv[3], [inp], outputs=[t.InferRequestedOutput("labels")])
np.save(sys.argv[4], result.as_numpy("labels"))
print(sorted(o.name for o in result.get_response().outputs))
"""


def test_tritonclient_grpc_through_the_published_port(project: Project, tmp_path) -> None:
    np.save(tmp_path / "image.npy", IMAGE[None])
    args = [project.grpc, tmp_path / "image.npy", DEFAULT_MODEL_NAME, tmp_path / "labels.npy"]
    probe = de.run([sys.executable, "-c", GRPC_PROBE, *args], timeout=120)
    assert probe.stdout.strip() == "['labels']"  # only what was asked for
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), _labels_here(IMAGE))


def test_metrics_count_the_requests_made(project: Project) -> None:
    text = httpx.get(f"{project.http}/metrics", timeout=30).text
    segment = [line for line in text.splitlines() if line.startswith("danet_http_requests_total{")]
    assert any('route="/segment"' in line and 'status="200"' in line for line in segment), segment


def test_export_service_converts_the_checkpoint_and_the_server_serves_it(project: Project) -> None:
    compose = project.compose
    with project.watch.lap("export"):
        compose("run", "--rm", "export", timeout=900)
    listed = de.docker("run", "--rm", "-v", f"{compose.name}_models:/models", "--entrypoint", "ls",
                       de.CPU_IMAGE, "/models").stdout.split()  # fmt: skip
    assert listed == [f"{EXPORTED}.onnx"]
    with project.watch.lap("restart"):
        compose.up(DANET_MODELS="/models")
    models = httpx.get(f"{project.http}/v1/models", timeout=30).json()["models"]
    assert [model["name"] for model in models] == [EXPORTED]
    response = httpx.post(f"{project.http}/segment?format=index", content=encode(IMAGE), timeout=60)
    assert response.status_code == 200 and response.headers["x-danet-model"] == EXPORTED
    labels = np.asarray(Image.open(io.BytesIO(response.content)))
    # Same checkpoint as the embedded model: the two exports agree on (almost) every pixel.
    assert labels.shape == IMAGE.shape[:2] and (labels == _labels_here(IMAGE)[0]).mean() > 0.99


def test_compose_stop_drains_in_flight_requests_and_exits_0(project: Project) -> None:
    """Last: `docker compose stop` (SIGTERM) while clients keep sending."""
    compose, port = project.compose, project.compose.port(8000)
    body = encode(bench_image(384, 384, seed=5))
    attempts: list[Attempt] = []
    lock, done = threading.Lock(), threading.Event()

    def client() -> None:
        # Docker's port proxy accepts connections for a stopping container and then closes them, so a
        # client only knows the server is gone once the port is refused (the container has stopped).
        while not done.is_set():
            attempt = _http_once("127.0.0.1", port, body)
            with lock:
                attempts.append(attempt)
            if attempt.outcome == "refused":
                return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while sum(a.status == 200 for a in list(attempts)) < 6:
        assert time.monotonic() < deadline, _summary(attempts)
        time.sleep(0.05)
    stop_called = time.monotonic()
    with project.watch.lap("stop"):
        compose("stop", "danet", timeout=120)
    done.set()
    for thread in threads:
        thread.join(timeout=150)

    state = compose.inspect()["State"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, compose.logs()[-3000:])
    assert "Traceback" not in compose.logs()
    # Sent before `stop` was even called: the server had accepted them, so each must have its answer.
    accepted = [a for a in attempts if a.sent is not None and a.sent < stop_called]
    unanswered = [a for a in accepted if a.outcome != "complete" or a.status not in (200, 503)]
    assert not unanswered, f"{unanswered[:3]} ({_summary(attempts)})"
    drained = [a for a in accepted if a.status == 200 and a.ended > stop_called]
    assert drained, f"no request was in flight at SIGTERM ({_summary(attempts)})"
    after = {a.outcome for a in attempts if a.sent is None or a.sent >= stop_called}
    assert after <= {"complete", "refused", "no-response"}, _summary(attempts)
