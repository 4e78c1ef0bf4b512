"""Overload: a queue of 2 and 48 clients at once. Rejections are immediate, nothing hangs.

Every call must end in a success or a deliberate rejection (503 with Retry-After and the JSON error
body / RESOURCE_EXHAUSTED); rejected calls must come back faster than accepted ones (they do not wait
for inference), and once the burst is over the server is ready and serves again.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.clients import GrpcSegmenter, LoadResult, Outcome, run_closed_loop
from bench.server_proc import ServerProcess
from tests.load.conftest import picture

pytestmark = pytest.mark.load

CLIENTS = 48
PER_CLIENT = 3
IMAGE = picture(384, 384, seed=3)  # a few hundred ms of inference per accepted call


@pytest.fixture(scope="module")
def small_queue_server(work_onnx: Path) -> Iterator[ServerProcess]:
    env = {
        "DANET_MAX_QUEUE": "2",
        "DANET_WORKERS": "1",
        "DANET_INTRA_OP_THREADS": "1",  # leave a core to the event loop and the clients
        "DANET_BATCHING": "off",
        "DANET_RETRY_AFTER_S": "2",
        "DANET_ACCESS_LOG": "false",
        "DANET_LOG_LEVEL": "WARNING",
    }
    with ServerProcess([work_onnx], env=env) as server:
        yield server


def _check_burst(name: str, result: LoadResult) -> None:
    print(f"\n{name}: {result.describe()}")
    assert len(result.outcomes) == CLIENTS * PER_CLIENT
    assert not result.failures, (
        f"{name}: {len(result.failures)} calls neither succeeded nor were rejected: {result.failures[:3]}"
    )
    rejected = result.rejected
    accepted = [o for o in result.outcomes if o.ok]
    assert rejected, f"{name}: a queue of 2 with {CLIENTS} clients rejected nothing"
    assert accepted, f"{name}: nothing was served"
    median_rejected = statistics.median(o.latency_s for o in rejected)
    median_accepted = statistics.median(o.latency_s for o in accepted)
    print(
        f"{name}: median rejection {median_rejected * 1000:.1f} ms, median success {median_accepted * 1000:.1f} ms"
    )
    assert median_rejected < median_accepted, "rejections should not wait for inference"


def test_http_overload_rejects_immediately(small_queue_server: ServerProcess) -> None:
    retry_after: set[str | None] = set()
    codes: set[str] = set()

    async def burst() -> LoadResult:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(
            base_url=small_queue_server.http_url, timeout=120.0, limits=limits
        ) as http:

            async def call() -> Outcome:
                t0 = time.perf_counter()
                try:
                    response = await http.post(
                        "/segment",
                        params={"format": "index"},
                        content=IMAGE,
                        headers={"content-type": "image/png"},
                    )
                except httpx.HTTPError as exc:
                    return Outcome(
                        False, f"error:{type(exc).__name__}", time.perf_counter() - t0, detail=str(exc)
                    )
                elapsed = time.perf_counter() - t0
                if response.status_code == 503:
                    retry_after.add(response.headers.get("retry-after"))
                    codes.add(response.json()["error"]["code"])
                return Outcome(
                    response.status_code == 200,
                    str(response.status_code),
                    elapsed,
                    len(response.content),
                    response.text[:200] if response.status_code != 200 else "",
                )

            return await run_closed_loop(call, concurrency=CLIENTS, total=CLIENTS * PER_CLIENT)

    result = asyncio.run(burst())
    _check_burst("HTTP", result)
    assert codes == {"overloaded"}, codes
    assert retry_after == {"2"}, f"503s should carry Retry-After: 2, got {retry_after}"
    assert small_queue_server.is_ready()
    response = httpx.post(
        f"{small_queue_server.http_url}/segment",
        content=IMAGE,
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200


def test_grpc_overload_rejects_immediately(small_queue_server: ServerProcess) -> None:
    async def burst() -> tuple[LoadResult, Outcome]:
        async with GrpcSegmenter(
            small_queue_server.grpc_target, IMAGE, output="INDEX", timeout_s=120
        ) as client:
            result = await run_closed_loop(client, concurrency=CLIENTS, total=CLIENTS * PER_CLIENT)
            after = await client()
        return result, after

    result, after = asyncio.run(burst())
    _check_burst("gRPC", result)
    assert {o.status for o in result.rejected} == {"RESOURCE_EXHAUSTED"}
    assert after.ok, after
    assert small_queue_server.is_ready()
