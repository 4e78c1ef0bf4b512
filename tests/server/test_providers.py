"""Execution-provider selection: order, options, GPU fallback and require_gpu (mocked: no GPU here)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from server.engine import Engine
from server.errors import ModelLoadError
from server.providers import (
    CPU,
    CUDA,
    TENSORRT,
    SessionHandle,
    create_session,
    cuda_problem,
    plan_providers,
    provider_options,
    session_options,
)
from server.settings import Settings

ALL = [TENSORRT, CUDA, CPU]


class FakeSession:
    def __init__(self, providers: list[str]) -> None:
        self._providers = providers

    def get_providers(self) -> list[str]:
        return self._providers


class FakeFactory:
    """Records calls; ``fail`` providers raise when first in the list; ``active`` decides what 'loads'."""

    def __init__(self, *, active: set[str], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.active = active
        self.fail = fail
        self.calls: list[list[tuple[str, dict[str, Any]]]] = []

    def __call__(
        self, source: Any, sess_options: Any, providers: list[tuple[str, dict[str, Any]]]
    ) -> FakeSession:
        self.calls.append(providers)
        names = [name for name, _ in providers]
        if names[0] in self.fail:
            raise RuntimeError(f"{names[0]}: libnvinfer.so.10: cannot open shared object file")
        return FakeSession([n for n in names if n in self.active or n == CPU])


def settings(**kw: Any) -> Settings:
    return Settings(**kw)


def with_driver(*args: Any, **kw: Any) -> SessionHandle:
    """create_session on a machine whose CUDA driver sees a GPU (the fakes decide what initialises)."""
    return create_session(*args, cuda_check=lambda: None, **kw)


def test_plan_keeps_priority_order_and_drops_unavailable() -> None:
    assert plan_providers(ALL, [CPU, CUDA]) == (
        [CUDA, CPU],
        [f"{TENSORRT} is not available in this onnxruntime build"],
    )
    assert plan_providers([CUDA, TENSORRT], ALL)[0] == [CUDA, TENSORRT, CPU]
    assert plan_providers([CPU], ALL)[0] == [CPU]
    assert plan_providers([], [CPU])[0] == [CPU]


def test_default_settings_prefer_tensorrt_then_cuda_then_cpu() -> None:
    assert Settings().providers == ALL


def test_cuda_and_tensorrt_options() -> None:
    s = settings(gpu_mem_limit_mb=512, device_id=1, trt_cache_dir=Path("/cache/trt"), trt_fp16=True)
    cuda = provider_options(CUDA, s)
    assert cuda["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda["arena_extend_strategy"] == "kSameAsRequested"
    assert cuda["gpu_mem_limit"] == 512 * 1024 * 1024
    assert cuda["device_id"] == 1
    trt = provider_options(TENSORRT, s)
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == "/cache/trt"
    assert trt["trt_timing_cache_path"] == "/cache/trt" and trt["trt_fp16_enable"] is True
    assert provider_options(CPU, s) == {}
    assert "gpu_mem_limit" not in provider_options(CUDA, settings())


def test_gpu_provider_active() -> None:
    factory = FakeFactory(active={CUDA})
    handle = with_driver(Path("m.onnx"), settings(providers=[CUDA, CPU]), available=ALL, factory=factory)
    assert handle.provider == CUDA and handle.on_gpu and not handle.fallback
    assert [name for name, _ in factory.calls[0]] == [CUDA, CPU]


def test_failing_tensorrt_is_dropped_and_cuda_used() -> None:
    factory = FakeFactory(active={CUDA, TENSORRT}, fail={TENSORRT})
    handle = with_driver(Path("m.onnx"), settings(), available=ALL, factory=factory)
    assert handle.provider == CUDA and not handle.fallback
    assert [[n for n, _ in call] for call in factory.calls] == [ALL, [CUDA, CPU]]
    assert any("libnvinfer" in note for note in handle.notes)


def test_silent_cpu_fallback_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    factory = FakeFactory(active=set())  # providers 'available' but nothing but CPU initialises
    with caplog.at_level(logging.WARNING, logger="server.providers"):
        handle = with_driver(Path("m.onnx"), settings(), available=ALL, factory=factory)
    assert handle.provider == CPU and handle.fallback
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and "GPU FALLBACK" in warning[0].getMessage()


def test_no_gpu_build_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    # onnxruntime without GPU providers (the CPU image) is a normal CPU start: one info line, no warning.
    with caplog.at_level(logging.INFO, logger="server.providers"):
        handle = with_driver(Path("m.onnx"), settings(), available=[CPU], factory=FakeFactory(active=set()))
    assert handle.provider == CPU and handle.fallback
    assert "not available" in (handle.fallback_reason or "")
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "active execution provider CPUExecutionProvider" in caplog.records[0].getMessage()


def test_cpu_only_configuration_is_not_a_fallback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="server.providers"):
        handle = with_driver(
            Path("m.onnx"), settings(providers=[CPU]), available=ALL, factory=FakeFactory(active=set())
        )
    assert handle.provider == CPU and not handle.fallback
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_require_gpu_refuses_cpu_fallback() -> None:
    with pytest.raises(ModelLoadError, match="require_gpu"):
        with_driver(
            Path("m.onnx"), settings(require_gpu=True), available=ALL, factory=FakeFactory(active=set())
        )


def test_require_gpu_refuses_cpu_only_build() -> None:
    factory = FakeFactory(active=set())
    with pytest.raises(ModelLoadError, match="no GPU execution provider"):
        with_driver(Path("m.onnx"), settings(require_gpu=True), available=[CPU], factory=factory)
    assert factory.calls == []  # refused before trying to load anything


def test_require_gpu_accepts_gpu() -> None:
    handle = with_driver(
        Path("m.onnx"), settings(require_gpu=True), available=ALL, factory=FakeFactory(active={TENSORRT})
    )
    assert handle.provider == TENSORRT


def test_unloadable_model_is_model_load_error() -> None:
    factory = FakeFactory(active=set(), fail={CPU})
    with pytest.raises(ModelLoadError, match="cannot load"):
        with_driver(Path("m.onnx"), settings(providers=[CPU]), available=ALL, factory=factory)


def test_real_onnxruntime_on_this_machine(tiny_onnx: Path) -> None:
    """The installed onnxruntime: whatever it offers, the reported provider is the one really running."""
    handle = create_session(tiny_onnx, settings())
    assert handle.provider == handle.session.get_providers()[0]
    assert handle.fallback == (handle.provider == CPU)


def test_engine_with_require_gpu_on_a_cpu_machine(tiny_onnx: Path) -> None:
    import onnxruntime as ort

    engine = Engine(settings(models=[tiny_onnx], require_gpu=True))
    if CUDA in ort.get_available_providers():
        try:
            handle = create_session(tiny_onnx, settings(providers=[CUDA]))
        except ModelLoadError:
            handle = None
        if handle is not None and handle.on_gpu:
            pytest.skip("a GPU is really usable here; this test covers machines without one")
    with pytest.raises(ModelLoadError, match="require_gpu"):
        asyncio.run(engine.start())


@pytest.mark.parametrize("arena", [False, True])
def test_cpu_arena_follows_the_setting(arena: bool) -> None:
    # On by default (speed); off trades 2-3x time on small models for a bounded peak RSS at 1024x2048.
    assert Settings().cpu_mem_arena is True
    assert session_options(Settings(cpu_mem_arena=arena)).enable_cpu_mem_arena is arena


def test_machine_without_cuda_skips_gpu_providers_quietly(caplog: pytest.LogCaptureFixture) -> None:
    factory = FakeFactory(active={CUDA, TENSORRT})
    with caplog.at_level(logging.DEBUG, logger="server.providers"):
        handle = create_session(
            Path("m.onnx"),
            settings(),
            available=ALL,
            factory=factory,
            cuda_check=lambda: "no CUDA driver on this machine (libcuda.so.1 not found)",
        )
    assert [[n for n, _ in call] for call in factory.calls] == [[CPU]]  # never asked for CUDA/TensorRT
    assert handle.provider == CPU and handle.fallback
    assert handle.fallback_reason is not None and "no CUDA driver" in handle.fallback_reason
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert (
        len(info) == 1
        and "active execution provider CPUExecutionProvider" in info[0]
        and "no CUDA driver" in info[0]
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(r.levelno == logging.DEBUG and "skipped" in r.getMessage() for r in caplog.records)


def test_require_gpu_without_cuda_says_why() -> None:
    factory = FakeFactory(active={CUDA})
    with pytest.raises(ModelLoadError, match="require_gpu.*the CUDA driver sees no GPU"):
        create_session(
            Path("m.onnx"),
            settings(require_gpu=True),
            available=ALL,
            factory=factory,
            cuda_check=lambda: "the CUDA driver sees no GPU",
        )
    assert factory.calls == []


def test_gpu_session_has_no_fallback_reason() -> None:
    handle = with_driver(Path("m.onnx"), settings(), available=ALL, factory=FakeFactory(active={TENSORRT}))
    assert handle.fallback_reason is None and handle.reason


def test_cuda_probe_matches_the_driver_library() -> None:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        assert "libcuda.so.1 not found" in (cuda_problem() or "")
    else:
        problem = cuda_problem()
        assert problem is None or "GPU" in problem


def test_trying_gpu_providers_prints_no_onnxruntime_errors(
    tiny_onnx: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Even when onnxruntime itself tries CUDA/TensorRT (a driver, but maybe no CUDA libraries), its
    provider errors stay off stderr/stdout, and its logger is back to normal afterwards."""
    import sys

    stdout = sys.stdout
    handle = with_driver(tiny_onnx, settings())
    out, err = capfd.readouterr()
    for marker in ("EP Error", "Require cuDNN", "[E:onnxruntime", "[W:onnxruntime", "Failed to load library"):
        assert marker not in out + err, (out + err)[-2000:]
    assert sys.stdout is stdout
    if handle.fallback:
        assert handle.fallback_reason


def test_quiet_period_is_shared_by_concurrent_sessions() -> None:
    import sys

    from server import providers

    stdout = sys.stdout
    with providers._quiet_onnxruntime():
        inner_stdout = sys.stdout
        with providers._quiet_onnxruntime():
            print("EP Error (swallowed)")  # noqa: T201
        assert sys.stdout is inner_stdout  # the inner end did not end the quiet period
    assert sys.stdout is stdout and providers._quiet_depth == 0


def test_intra_op_spinning_is_a_setting() -> None:
    entry = "session.intra_op.allow_spinning"
    assert session_options(Settings(intra_op_spinning=False)).get_session_config_entry(entry) == "0"
    with pytest.raises(Exception, match=entry):  # unset: onnxruntime's default (spinning)
        session_options(Settings()).get_session_config_entry(entry)
