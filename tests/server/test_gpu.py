"""On a machine with a usable CUDA GPU (``-m gpu``): the engine really runs there, agrees with CPU, batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.engine import Engine
from server.providers import CUDA, GPU_PROVIDERS, TENSORRT, create_session
from server.segmentation import Segmenter, SegmentOptions
from server.settings import Settings
from tests.conftest import make_scene

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True, scope="module")
def _usable_cuda(tiny_onnx: Path) -> None:
    """onnxruntime-gpu lists CUDA even without a GPU; only a session that really runs on it counts."""
    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA provider")
    if create_session(tiny_onnx, Settings(providers=[CUDA])).provider != CUDA:
        pytest.skip("the CUDA provider does not initialise here (no GPU or CUDA libraries)")


def started(models: list[Path], **kw: object) -> Engine:
    engine = Engine(Settings(models=models, warmup_sizes=["64x64"], **kw))  # type: ignore[arg-type]
    asyncio.run(engine.start())
    return engine


@pytest.mark.parametrize(
    "providers", [[CUDA, "CPUExecutionProvider"], [TENSORRT, CUDA, "CPUExecutionProvider"]]
)
def test_gpu_engine_matches_cpu(tiny_onnx: Path, tmp_path: Path, providers: list[str]) -> None:
    gpu = started([tiny_onnx], providers=providers, require_gpu=True, trt_cache_dir=tmp_path / "trt")
    cpu = started([tiny_onnx], providers=["CPUExecutionProvider"])
    try:
        info = gpu.get_model(None)
        assert info.provider in GPU_PROVIDERS and not info.fallback
        image = make_scene(64, 64)
        for options in (SegmentOptions(), SegmentOptions(mode="slide", flip=True)):
            on_gpu = asyncio.run(Segmenter(gpu).segment(image, options))
            on_cpu = asyncio.run(Segmenter(cpu).segment(image, options))
            assert on_gpu.provider == info.provider
            np.testing.assert_array_equal(on_gpu.labels, on_cpu.labels)
        assert gpu.instance(None).use_io_binding  # GPU runs go through IO binding by default
        batch = np.stack([make_scene(64, 64, seed=s) for s in range(3)])
        out = asyncio.run(gpu.infer(None, batch, ["labels", "logits"]))
        ref = asyncio.run(cpu.infer(None, batch, ["labels", "logits"]))
        np.testing.assert_array_equal(out["labels"], ref["labels"])
        np.testing.assert_allclose(out["logits"], ref["logits"], rtol=1e-3, atol=1e-3)
    finally:
        asyncio.run(gpu.close())
        asyncio.run(cpu.close())


def test_auto_batching_is_on_for_gpu(tiny_onnx: Path) -> None:
    engine = started([tiny_onnx], providers=[CUDA], batching="auto", max_batch_size=8, batch_delay_ms=20)
    try:
        assert engine.describe()["models"]["tiny"]["batching"] is True
        image = make_scene(64, 64)[None]

        async def burst() -> None:
            await asyncio.gather(*(engine.infer(None, image, ["labels"]) for _ in range(16)))

        asyncio.run(burst())
        text = engine.metrics.render().decode()
        count = float(text.split('danet_batch_size_count{model="tiny"} ')[1].split()[0])
        total = float(text.split('danet_batch_size_sum{model="tiny"} ')[1].split()[0])
        assert total / count > 1.0
    finally:
        asyncio.run(engine.close())


def test_http_reports_the_gpu_provider(tiny_onnx: Path, tmp_path: Path) -> None:
    from tests.conftest import encode
    from tests.server.conftest import make_settings, running_app

    settings = make_settings([tiny_onnx], providers=[CUDA, "CPUExecutionProvider"], trt_cache_dir=tmp_path)
    with running_app(settings) as (client, _):
        response = client.post(
            "/segment", content=encode(make_scene()), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 200 and response.headers["x-danet-provider"] == CUDA
        assert client.get("/v1/models").json()["models"][0]["provider"] == CUDA
        assert client.get("/readyz").json()["models"]["tiny"]["provider"] == CUDA
        metrics = client.get("/metrics").text
        assert f'danet_model_provider{{model="tiny",provider="{CUDA}"}} 1.0' in metrics
        assert 'danet_provider_fallback{model="tiny"} 0.0' in metrics
