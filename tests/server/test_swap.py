"""Zero-downtime model updates, end to end: real ``danet-serve`` processes, a bounded stream of concurrent REST
and gRPC requests running the whole time, versions added (explicit load and polling), switched, retired, and a
broken version refused. Every request must succeed, and the answering version must change at one point in time.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from bench.server_proc import ServerProcess
from protos.gen.danet.segmentation.v1 import segmentation_pb2 as seg_pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as seg_grpc
from protos.gen.inference import grpc_service_pb2 as kserve_pb
from protos.gen.inference import grpc_service_pb2_grpc as kserve_grpc
from tests.conftest import encode, server_process
from tests.onnx_fixtures import write_model

logger = logging.getLogger(__name__)

MODEL = "tiny"
IMAGE = np.random.default_rng(3).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
PNG = encode(IMAGE)
TRITON_GRPC_PROBE = """
import json, sys
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException
client = triton.InferenceServerClient(sys.argv[1])
seen = {"index_before": client.get_model_repository_index(as_json=True)}
client.load_model(sys.argv[2])
seen["ready_after_load"] = client.is_model_ready(sys.argv[2])
seen["index_after_load"] = client.get_model_repository_index(as_json=True)
client.unload_model(sys.argv[2])
seen["ready_after_unload"] = client.is_model_ready(sys.argv[2])
try:
    client.load_model("no-such-model")
except InferenceServerException as exc:
    seen["unknown_load"] = str(exc.status())
print(json.dumps(seen))
"""


def stage_version(repo: Path, version: int, *, broken: bool = False) -> None:
    """Write the version beside the model, then rename it into place (one step for a scanner)."""
    staging = repo / f".staging-{version}"
    if broken:  # readable ONNX that breaks the contract
        write_model(staging / "model.onnx", input_name="pixels")
    else:
        write_model(staging / "model.onnx", model_name=MODEL, bias=np.full(4, 0.01 * version, np.float32))
    staging.rename(repo / MODEL / str(version))


@dataclass
class Outcome:
    door: str
    started: float
    ended: float
    version: str | None  # None: the request failed
    error: str = ""


class Stream:
    """``rest`` + ``grpc`` threads, each sending one request after the other (at most ``limit`` each)."""

    def __init__(self, server: ServerProcess, *, limit: int = 5000) -> None:
        self.server = server
        self.limit = limit
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        doors: list[tuple[str, Callable[[], Callable[[], str]]]] = [
            ("rest /segment", self._rest_segment),
            ("rest /v2 infer", self._rest_infer),
            ("grpc Segment", self._grpc_segment),
            ("grpc ModelInfer", self._grpc_infer),
        ]
        self.doors = [name for name, _ in doors]
        self._threads = [threading.Thread(target=self._run, args=door, daemon=True) for door in doors]

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, door: str, connect: Callable[[], Callable[[], str]]) -> None:
        send = connect()
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                outcome = Outcome(door, started, time.monotonic(), send())
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome the test reports
                outcome = Outcome(door, started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
            outcome.ended = time.monotonic()
            with self._lock:
                self.outcomes.append(outcome)

    # --- the four doors: each returns the version that answered, or raises ---------------------------
    def _rest_segment(self) -> Callable[[], str]:
        client = httpx.Client(base_url=self.server.url, timeout=30)

        def send() -> str:
            response = client.post(
                f"/segment?model={MODEL}&format=index", content=PNG, headers={"Content-Type": "image/png"}
            )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            return response.headers["x-danet-model-version"]

        return send

    def _rest_infer(self) -> Callable[[], str]:
        client = httpx.Client(base_url=self.server.url, timeout=30)
        body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 16, 16, 3],
                    "datatype": "UINT8",
                    "data": IMAGE.ravel().tolist(),
                }
            ],
            "outputs": [{"name": "labels"}],
        }

        def send() -> str:
            response = client.post(f"/v2/models/{MODEL}/infer", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            return str(response.json()["model_version"])

        return send

    def _grpc_segment(self) -> Callable[[], str]:
        stub = seg_grpc.SegmentationServiceStub(grpc.insecure_channel(self.server.grpc_target))
        request = seg_pb.SegmentRequest(
            raw=seg_pb.RawImage(height=16, width=16, pixels=IMAGE.tobytes()),
            options=seg_pb.SegmentOptions(model=MODEL),
        )
        return lambda: str(stub.Segment(request, timeout=30).model_version)

    def _grpc_infer(self) -> Callable[[], str]:
        stub = kserve_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.server.grpc_target))
        request = kserve_pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[IMAGE.tobytes()])
        request.inputs.add(name="image", datatype="UINT8", shape=[1, 16, 16, 3])
        request.outputs.add(name="labels")
        return lambda: str(stub.ModelInfer(request, timeout=30).model_version)

    # --- observation --------------------------------------------------------------------------------
    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_answers(
        self, version: str, count: int = 12, *, since: float = 0.0, timeout: float = 90.0
    ) -> None:
        """Until every door has answered ``count`` times from ``version`` (requests started after ``since``)."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.snapshot()
            failed = [o for o in done if o.version is None]
            assert not failed, f"{len(failed)} failed requests, first: {failed[0]}"
            tally = dict.fromkeys(self.doors, 0)
            for o in done:
                if o.version == version and o.started >= since:
                    tally[o.door] += 1
            if min(tally.values()) >= count:
                return
            assert time.monotonic() < deadline, f"version {version} answers after {since}: {tally}"
            time.sleep(0.05)


def check_one_switch(outcomes: list[Outcome], old: str, new: str) -> dict[str, int]:
    """Zero failures, only ``old`` and ``new``, and one switch: no ``old`` answer to a request that started
    after some ``new`` answer had arrived."""
    failed = [o for o in outcomes if o.version is None]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed, e.g. {failed[:3]}"
    counts = {v: sum(1 for o in outcomes if o.version == v) for v in {o.version or "" for o in outcomes}}
    assert set(counts) == {old, new}, counts
    first_new_answer = min(o.ended for o in outcomes if o.version == new)
    late_old = [o for o in outcomes if o.version == old and o.started > first_new_answer]
    assert not late_old, f"{len(late_old)} requests got {old} after {new} had answered"
    return counts


def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    stage = repo / MODEL / "1" / "model.onnx"
    write_model(stage, model_name=MODEL)
    return repo


@pytest.fixture
def explicit_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    repo = repository(tmp_path)
    mode = ("--model-control-mode", "explicit", "--load-model", MODEL)
    with server_process((), "--model-repository", str(repo), *mode, log_format="text") as server:
        yield server, repo


def test_explicit_swap_under_load_has_no_failed_request(explicit_server: tuple[ServerProcess, Path]) -> None:
    server, repo = explicit_server
    triton = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    with Stream(server) as stream:
        stream.wait_answers("1")
        stage_version(repo, 2)
        triton.load_model(MODEL)  # returns once v2 serves; v1 is then drained and released
        loaded = time.monotonic()
        stream.wait_answers("2", since=loaded)
        assert triton.is_model_ready(MODEL) and triton.is_model_ready(MODEL, "2")
        assert not triton.is_model_ready(MODEL, "1")

        stage_version(repo, 3, broken=True)
        with pytest.raises(InferenceServerException, match="version 3") as refused:
            triton.load_model(MODEL)
        assert "input named 'image'" in str(refused.value)
        stream.wait_answers("2", since=time.monotonic())
    counts = check_one_switch(stream.snapshot(), "1", "2")
    logger.info("explicit swap: %s answers, 0 failed", counts)

    index = {(row["name"], row.get("version")): row for row in triton.get_model_repository_index()}
    assert index[(MODEL, "1")]["state"] == "UNAVAILABLE" and index[(MODEL, "1")]["reason"] == "unloaded"
    assert index[(MODEL, "2")]["state"] == "READY"
    assert index[(MODEL, "3")]["state"] == "UNAVAILABLE" and "image" in index[(MODEL, "3")]["reason"]

    triton.unload_model(MODEL)  # the last version: not found everywhere, never a server error
    assert not triton.is_model_ready(MODEL)
    assert (
        httpx.post(
            f"{server.url}/segment?model={MODEL}", content=PNG, headers={"Content-Type": "image/png"}
        ).status_code
        == 404
    )
    assert httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json={}).status_code == 404
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            kserve_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                kserve_pb.ModelMetadataRequest(name=MODEL), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            request = seg_pb.SegmentRequest(encoded=PNG, options=seg_pb.SegmentOptions(model=MODEL))
            seg_grpc.SegmentationServiceStub(channel).Segment(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Traceback" not in server.log()


def test_tritonclient_grpc_repository_calls(explicit_server: tuple[ServerProcess, Path]) -> None:
    """tritonclient.grpc in its own process (its `inference.*` protobuf symbols clash with ours here)."""
    server, _ = explicit_server
    run = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC_PROBE, server.grpc_target, MODEL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["index_before"]["models"] == [{"name": MODEL, "version": "1", "state": "READY"}]
    assert seen["ready_after_load"] is True and seen["ready_after_unload"] is False
    assert seen["unknown_load"] == "StatusCode.NOT_FOUND"


def test_poll_swap_under_load_has_no_failed_request(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    poll = ("--model-control-mode", "poll", "--repository-poll-s", "0.2")
    with server_process((), "--model-repository", str(repo), *poll, log_format="text") as server:
        triton = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        with Stream(server) as stream:
            stream.wait_answers("1")
            stage_version(repo, 2)
            stream.wait_answers("2")
            stage_version(repo, 3, broken=True)
            deadline = time.monotonic() + 60
            while not any(
                row.get("version") == "3" and row["state"] == "UNAVAILABLE"
                for row in triton.get_model_repository_index()
            ):
                assert time.monotonic() < deadline, "the broken version never showed up in the index"
                time.sleep(0.1)
            stream.wait_answers("2", since=time.monotonic())
        counts = check_one_switch(stream.snapshot(), "1", "2")
        logger.info("poll swap: %s answers, 0 failed", counts)
        with pytest.raises(InferenceServerException, match="polling"):
            triton.load_model(MODEL)
        assert "Traceback" not in server.log()
