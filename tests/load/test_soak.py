"""Short soak: hundreds of requests at concurrency 32 over HTTP and gRPC against one server.

No errors other than deliberate rejections (503 / RESOURCE_EXHAUSTED), resident memory after warm-up
grows by less than 10%, latency percentiles printed. ``DANET_SOAK_REQUESTS`` (default 300 per protocol)
makes it the long soak, e.g. ``DANET_SOAK_REQUESTS=5000 pytest -m load tests/load/test_soak.py -s``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.clients import GrpcSegmenter, HttpSegmenter, LoadResult, run_closed_loop
from bench.server_proc import ServerProcess
from tests.load.conftest import picture

pytestmark = pytest.mark.load

CONCURRENCY = 32
REQUESTS = int(os.environ.get("DANET_SOAK_REQUESTS", "300"))
WARMUP = 100
MAX_GROWTH = 0.10


@pytest.fixture(scope="module")
def soak_server(tiny_onnx: Path) -> Iterator[ServerProcess]:
    env = {"DANET_MAX_QUEUE": "256", "DANET_ACCESS_LOG": "false", "DANET_LOG_LEVEL": "WARNING"}
    with ServerProcess([tiny_onnx], env=env) as server:
        yield server


async def _soak(
    client: HttpSegmenter | GrpcSegmenter, server: ServerProcess
) -> tuple[LoadResult, LoadResult, int, int]:
    async with client:
        warm = await run_closed_loop(client, concurrency=CONCURRENCY, total=WARMUP)
        rss_after_warmup = server.rss_bytes()
        main = await run_closed_loop(client, concurrency=CONCURRENCY, total=REQUESTS)
        rss_end = server.rss_bytes()
    assert rss_after_warmup is not None and rss_end is not None
    return warm, main, rss_after_warmup, rss_end


def _check(name: str, warm: LoadResult, main: LoadResult, rss_warm: int, rss_end: int) -> None:
    growth = (rss_end - rss_warm) / rss_warm
    print(f"\n{name} warm-up: {warm.describe()}")
    print(f"{name} soak:    {main.describe()}")
    print(
        f"{name} RSS after warm-up {rss_warm / 1e6:.1f} MB, after soak {rss_end / 1e6:.1f} MB ({growth * 100:+.1f}%)"
    )
    for result in (warm, main):
        assert not result.failures, f"{name}: {len(result.failures)} failures, first: {result.failures[0]}"
    assert len(main.outcomes) == REQUESTS
    assert main.ok_count > 0
    assert growth < MAX_GROWTH, f"{name}: RSS grew {growth * 100:.1f}% after warm-up"


def test_http_soak(soak_server: ServerProcess) -> None:
    client = HttpSegmenter(
        soak_server.http_url, picture(64, 64), params={"format": "index"}, max_connections=CONCURRENCY
    )
    warm, main, rss_warm, rss_end = asyncio.run(_soak(client, soak_server))
    _check("HTTP", warm, main, rss_warm, rss_end)
    assert soak_server.is_ready()


def test_grpc_soak(soak_server: ServerProcess) -> None:
    client = GrpcSegmenter(soak_server.grpc_target, picture(64, 64), output="INDEX")
    warm, main, rss_warm, rss_end = asyncio.run(_soak(client, soak_server))
    _check("gRPC", warm, main, rss_warm, rss_end)
    assert soak_server.is_ready()
