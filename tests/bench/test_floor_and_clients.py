from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bench.clients import Outcome, run_closed_loop
from bench.floor import make_session, measure_floor, served_outputs
from bench.images import bench_image, decode, encode
from bench.isolate import run_isolated
from bench.tiny_model import TINY_CLASSES, build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bench") / "tiny.onnx", layers=1, channels=4)


def test_tiny_model_follows_the_contract(tiny: Path) -> None:
    session = make_session(tiny, ["CPUExecutionProvider"], threads=1)
    assert served_outputs(session) == ["labels", "confidence"]
    labels, confidence = session.run(None, {"image": bench_image(17, 23)[None]})
    assert labels.shape == (1, 17, 23) and labels.dtype == np.uint8
    assert int(labels.max()) < len(TINY_CLASSES)
    assert confidence.shape == (1, 17, 23)
    assert np.all((confidence > 0) & (confidence <= 1))


def test_measure_floor(tiny: Path) -> None:
    image = bench_image(32, 48)
    m = measure_floor(
        tiny,
        image,
        providers=["CPUExecutionProvider"],
        threads=1,
        iterations=4,
        warmup=1,
        concurrency=[1, 2],
        rounds=2,
    )
    assert m.provider == "CPUExecutionProvider"
    assert len(m.durations_s) == 4 and all(d > 0 for d in m.durations_s)
    assert set(m.throughput_rps) == {1, 2} and all(v > 0 for v in m.throughput_rps.values())
    assert m.labels.shape == (32, 48)


def test_isolated_run_reports_its_own_peak_rss(tiny: Path) -> None:
    m, peak = run_isolated(
        measure_floor,
        tiny,
        bench_image(16, 16),
        providers=["CPUExecutionProvider"],
        threads=1,
        iterations=1,
        warmup=0,
        concurrency=[1],
        rounds=1,
    )
    assert m.labels.shape == (16, 16)
    assert 10_000_000 < peak < 2_000_000_000


def test_closed_loop_keeps_concurrency_and_counts() -> None:
    in_flight = 0
    most = 0

    async def call() -> Outcome:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return Outcome(True, "200", 0.001) if most % 2 else Outcome(False, "503", 0.001)

    result = asyncio.run(run_closed_loop(call, concurrency=5, total=23))
    assert len(result.outcomes) == 23
    assert most == 5
    assert not result.failures  # 503 is a deliberate rejection, not a failure


def test_images_round_trip() -> None:
    image = bench_image(40, 30, seed=2)
    assert image.shape == (40, 30, 3) and image.dtype == np.uint8
    assert np.array_equal(decode(encode(image)), image)
