"""Execution-provider selection: which onnxruntime provider runs a model, and with which options.

onnxruntime-gpu lists CUDA/TensorRT as *available* even on a machine without a GPU, and asking for them
there prints red provider errors before it quietly runs on CPU (onnxruntime #23372). So the CUDA driver is
probed first (no driver or no device: the GPU providers are skipped, and the reason said once at info
level), onnxruntime's own logger is silenced while GPU providers are tried, the active provider is read
back from the created session, a GPU that should have worked but did not is a warning, and
``require_gpu`` turns any CPU fallback into a start-up failure. The reason travels with the session
(``SessionHandle.reason``) into ``/readyz``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from server import allocator
from server.errors import ModelLoadError
from server.settings import Settings

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = frozenset(
    {CUDA, TENSORRT, "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider"}
)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

SessionFactory = Callable[..., Any]


@dataclass
class SessionHandle:
    """A created session and what we learned while creating it."""

    session: Any
    provider: str  # the provider that actually runs the graph (first of session.get_providers())
    requested: list[str]  # what we asked for, in order, after dropping unavailable providers
    fallback: bool  # a GPU provider was wanted but the session runs on CPU
    notes: list[str] = field(default_factory=list)  # why providers were dropped
    reason: str = ""  # why ``provider`` runs, in one phrase (for the log line and /readyz)
    cpu_arena: bool = True  # onnxruntime's CPU arena holds the activations (else malloc does)

    @property
    def fallback_reason(self) -> str | None:
        """Why a wanted GPU provider is not running (None when there was no fallback)."""
        return self.reason if self.fallback else None

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS


def plan_providers(wanted: Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """Keep the wanted providers that onnxruntime offers, in the wanted order; CPU always closes the list.

    Returns (plan, notes) where notes explain each dropped provider.
    """
    plan: list[str] = []
    notes: list[str] = []
    for name in wanted:
        if name in plan:
            continue
        if name in available:
            plan.append(name)
        else:
            notes.append(f"{name} is not available in this onnxruntime build")
    if CPU not in plan:
        plan.append(CPU)
    return plan, notes


def provider_options(name: str, settings: Settings) -> dict[str, Any]:
    """onnxruntime provider options for ``name`` from the settings."""
    if name == CUDA:
        options: dict[str, Any] = {
            "device_id": settings.device_id,
            "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
            "arena_extend_strategy": settings.arena_extend_strategy,
            "do_copy_in_default_stream": True,
        }
        if settings.gpu_mem_limit_mb is not None:
            options["gpu_mem_limit"] = settings.gpu_mem_limit_mb * 1024 * 1024
        return options
    if name == TENSORRT:
        cache = str(Path(settings.trt_cache_dir).expanduser())
        return {
            "device_id": settings.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": settings.trt_fp16,
        }
    return {}


def use_cpu_arena(settings: Settings, model_bytes: int) -> bool:
    """The per-model memory policy: the CPU arena for models up to ``cpu_arena_max_model_mb``.

    Large networks at full resolution allocate activations of hundreds of MB whose freed fragments
    the arena keeps (it never returns memory); small models gain speed from it and use little.
    """
    limit = settings.cpu_arena_max_model_mb
    return settings.cpu_mem_arena and (limit is None or model_bytes <= limit * 1e6)


def loading_memory(arena: bool) -> contextlib.AbstractContextManager[None]:
    """Around creating a session without the CPU arena: glibc gives freed blocks back while it loads.

    Loading frees large buffers early; kept in malloc's heap, DANet-R50's alone held ~175 MB after
    loading (measured). Loading counts as a large run of :data:`server.allocator.HEAP` (thresholds at
    128 KiB, the heap trimmed first); nothing happens with the arena, another allocator or an explicit
    ``MALLOC_MMAP_THRESHOLD_``.
    """
    if arena or not allocator.heap_modes_apply():
        return contextlib.nullcontext()
    return allocator.HEAP.run(sys.maxsize, 0)


def session_options(settings: Settings, model_bytes: int = 0) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    arena = use_cpu_arena(settings, model_bytes)
    options.enable_cpu_mem_arena = arena
    # Without the arena, a memory pattern makes every repeated shape allocate one block laid out by
    # the planner, larger than the live peak (DANet-R50 1024x2048 in danet-serve: +240 MB from the
    # second request on, measured); allocating tensor by tensor keeps the peak at what is live.
    # With the arena shrunk after every run, patterns would pin one planned block per shape instead.
    options.enable_mem_pattern = arena and not settings.cpu_arena_shrink
    # Without the arena, the planner's reuse of a freed buffer for a later tensor holds it through the
    # gap; freeing every tensor at its last use lowers DANet-R50's 1024x2048 peak by ~70 MB (measured).
    options.enable_mem_reuse = arena or settings.cpu_buffer_reuse
    if settings.intra_op_threads:
        options.intra_op_num_threads = settings.intra_op_threads
    if settings.inter_op_threads:
        options.inter_op_num_threads = settings.inter_op_threads
    if not settings.intra_op_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # provider load failures are reported by us, once, clearly
    return options


def create_session(
    model: Path | bytes,
    settings: Settings,
    *,
    label: str = "model",
    available: Sequence[str] | None = None,
    factory: SessionFactory | None = None,
    cuda_check: Callable[[], str | None] | None = None,
) -> SessionHandle:
    """Create an inference session on the best provider that works.

    Skips CUDA/TensorRT when ``cuda_check`` (default: :func:`cuda_problem`) names a reason, then tries the
    planned provider list; if creation raises, drops the first provider and tries again, so a broken
    TensorRT install still gets CUDA. Raises ModelLoadError when the model cannot be loaded at all, or when
    ``settings.require_gpu`` is set and no GPU provider became active.
    """
    available = list(ort.get_available_providers() if available is None else available)
    factory = factory or ort.InferenceSession
    plan, notes = plan_providers(settings.providers, available)
    skipped_for = None
    if any(p in CUDA_FAMILY for p in plan):
        skipped_for = (cuda_check or cuda_problem)()
        if skipped_for is not None:
            skipped = [p for p in plan if p in CUDA_FAMILY]
            plan = [p for p in plan if p not in CUDA_FAMILY]
            notes.append(f"{', '.join(skipped)} skipped: {skipped_for}")
    if settings.require_gpu and not any(p in GPU_PROVIDERS for p in plan):
        raise ModelLoadError(
            f"require_gpu is set but no GPU execution provider is usable for {label}: requested "
            f"{list(settings.providers)}, onnxruntime offers {available}"
            f"{f'; {skipped_for}' if skipped_for else ''}. Use a machine with a GPU and CUDA, or unset "
            "DANET_REQUIRE_GPU / --require-gpu."
        )
    if any(p in CUDA_FAMILY for p in plan):
        _preload_cuda_libraries()
    source = str(model) if isinstance(model, Path) else model
    model_bytes = _size_of(model)
    arena = use_cpu_arena(settings, model_bytes)
    attempt = list(plan)
    last_error: Exception | None = None
    session = None
    while attempt:
        try:
            with _quiet_onnxruntime(any(p in GPU_PROVIDERS for p in attempt)), loading_memory(arena):
                session = factory(
                    source,
                    sess_options=session_options(settings, model_bytes),
                    providers=[(name, provider_options(name, settings)) for name in attempt],
                )
            break
        except Exception as exc:  # onnxruntime raises plain RuntimeError/Fail/InvalidGraph types
            last_error = exc
            if attempt == [CPU] or len(attempt) == 1:
                break
            notes.append(f"{attempt[0]} failed to initialise: {_one_line(exc)}")
            attempt = attempt[1:]
    if session is None:
        raise ModelLoadError(f"cannot load {label}: {_one_line(last_error)}") from last_error

    active_list = list(session.get_providers())
    active = active_list[0] if active_list else CPU
    wanted_gpu = [p for p in settings.providers if p in GPU_PROVIDERS]
    fallback = bool(wanted_gpu) and active not in GPU_PROVIDERS
    tried_gpu = [p for p in attempt if p in GPU_PROVIDERS]
    if fallback and tried_gpu:
        # onnxruntime accepted the GPU providers but did not activate them (its own messages were
        # silenced): load the provider library ourselves to name what is missing.
        cause = _provider_library_problem(tried_gpu[0]) or "no usable GPU / CUDA libraries?"
        notes.append(f"onnxruntime did not activate {tried_gpu[0]} ({cause})")
    reason = _reason(active, settings.providers, notes)
    if fallback and settings.require_gpu:
        raise ModelLoadError(f"require_gpu is set: {label} would run on {active}: {reason}")
    if notes:
        logger.debug("%s: provider notes: %s", label, "; ".join(notes), extra={"model": label})
    # A GPU that should have worked (a driver is present, the providers were tried) is worth a warning;
    # a machine without CUDA running on CPU is the normal case there and gets the same one line at info.
    level = logging.WARNING if fallback and tried_gpu else logging.INFO
    logger.log(
        level,
        "%s%s: active execution provider %s (%s), CPU arena %s",
        "GPU FALLBACK: " if level == logging.WARNING else "",
        label,
        active,
        reason,
        "on" if arena else f"off (large model; {allocator.describe()})",
        extra={"provider": active, "model": label, "fallback": fallback},
    )
    return SessionHandle(
        session=session,
        provider=active,
        requested=attempt,
        fallback=fallback,
        notes=notes,
        reason=reason,
        cpu_arena=arena,
    )


#: The providers that need the CUDA driver (probed before onnxruntime is asked for them).
CUDA_FAMILY = frozenset({CUDA, TENSORRT})


def _reason(active: str, wanted: Sequence[str], notes: Sequence[str]) -> str:
    """Why ``active`` runs, in one phrase."""
    if active in GPU_PROVIDERS:
        return "the first requested provider that initialised" if notes else "requested"
    if not any(p in GPU_PROVIDERS for p in wanted):
        return "the only provider requested"
    return "; ".join(notes) or "no GPU provider available"


@functools.cache
def cuda_problem() -> str | None:
    """Why CUDA cannot run on this machine, or None when the driver sees at least one GPU.

    Asks the CUDA driver directly (``libcuda``), without onnxruntime, so a machine without a GPU gets a
    plain reason instead of provider-library load errors. Cached: the answer does not change while the
    process runs.
    """
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:
        return f"no CUDA driver on this machine ({name} not found)"
    try:
        status = driver.cuInit(0)
        if status != 0:
            return f"the CUDA driver reports no usable GPU (cuInit error {status})"
        count = ctypes.c_int(0)
        status = driver.cuDeviceGetCount(ctypes.byref(count))
    except AttributeError:
        return f"{name} is not a CUDA driver"
    if status != 0 or count.value < 1:
        return "the CUDA driver sees no GPU"
    return None


def _provider_library_problem(provider: str) -> str | None:
    """Load onnxruntime's library for ``provider`` to learn which dependency is missing (None: it loads)."""
    stem = {CUDA: "cuda", TENSORRT: "tensorrt"}.get(provider)
    if stem is None:
        return None
    library = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{stem}.so"
    if not library.exists():
        return None
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return _one_line(exc).replace(f"{library}: ", "")
    return None


#: onnxruntime's default logger severity (warning) and the one used while GPU providers are tried (fatal).
_ORT_WARNING, _ORT_FATAL = 2, 4
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: dict[str, Any] = {}


@contextlib.contextmanager
def _quiet_onnxruntime(active: bool = True) -> Iterator[None]:
    """Silence onnxruntime while a session with GPU providers is created.

    Provider-library load failures go to onnxruntime's process-wide logger (red, on stderr) and its Python
    fallback prints an "EP Error" block on stdout, even when the session then runs on CPU; create_session
    reports the reason itself, once. The printed text is kept at debug level. Nested and concurrent uses
    share one quiet period that ends with the last of them.
    """
    global _quiet_depth
    if not active:
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            ort.set_default_logger_severity(_ORT_FATAL)
            _quiet_saved["stdout"], _quiet_saved["buffer"] = sys.stdout, io.StringIO()
            sys.stdout = _quiet_saved["buffer"]
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                ort.set_default_logger_severity(_ORT_WARNING)
                sys.stdout = _quiet_saved.pop("stdout")
                printed = _quiet_saved.pop("buffer").getvalue()
                if printed.strip():
                    logger.debug("onnxruntime while trying GPU providers: %s", " ".join(printed.split()))


@functools.cache
def _preload_cuda_libraries() -> None:
    """Let onnxruntime find CUDA/cuDNN from the nvidia-* Python packages (no LD_LIBRARY_PATH needed).

    Missing libraries are not an error here: the session then falls back and says so."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            preload()
    except Exception as exc:  # a failed preload only means "no usable CUDA libraries"
        logger.debug("onnxruntime.preload_dlls failed: %s", exc)
    if chatter.getvalue().strip():
        logger.debug("onnxruntime.preload_dlls: %s", " ".join(chatter.getvalue().split()))


def _size_of(model: Path | bytes) -> int:
    if isinstance(model, bytes):
        return len(model)
    try:
        return model.stat().st_size
    except OSError:  # the session creation reports a missing file
        return 0


def _one_line(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else "unknown error"
    return " ".join(text.split())[:500]
