"""The C allocator under onnxruntime, set up by ``danet-serve`` itself before anything is allocated.

Without onnxruntime's CPU arena (large models, see :func:`server.providers.use_cpu_arena`) every
activation is a ``malloc``/``free`` pair, and glibc (mmap threshold pinned at 128 KiB) serves each large
one with a fresh ``mmap`` and gives it back with ``munmap``: memory follows what is live, but every pass
faults all of its activations in again, 4 KiB at a time (DANet-R50 512x512: ~222,000 minor faults per
pass against none for a default session; 1024x2048: ~121,000 faults in 2 MiB pages, measured).

With transparent huge pages for malloc's large blocks (``glibc.malloc.hugetlb=1``, or mimalloc's
``MIMALLOC_LARGE_OS_PAGES=1``) the same memory comes back in 2 MiB pages: ~31,000 faults per 512x512
pass, the same peak (896 MB in-process at 1024x2048). Both are read once, when the process starts, so
``danet-serve`` re-executes itself once at start-up with them in its environment
(:func:`preload_plan` decides, :func:`reexec_with_allocator` acts). ``cpu_allocator`` can also preload
mimalloc or jemalloc (Debian ``libmimalloc2.0`` / ``libmimalloc3``, ``libjemalloc2``); measured, both
keep more memory than glibc (mimalloc: +220 MB after loading DANet-R50, 1129 MB at 1024x2048), so the
system malloc stays the default. What the environment already sets is kept.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from server.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Library file names per preloadable allocator, newest ABI first.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "mimalloc": ("libmimalloc.so.3", "libmimalloc.so.2", "libmimalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}

#: Where Debian, Ubuntu, Alpine and Fedora install shared libraries.
LIBRARY_DIRS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/local/lib",
    "/usr/lib",
    "/usr/lib64",
    "/lib",
)

#: glibc's tunable for transparent huge pages on malloc's mmap'd chunks and heap (glibc >= 2.35).
GLIBC_HUGE_PAGES = "glibc.malloc.hugetlb=1"

#: Set in the environment of the re-executed process, so that it never re-executes again.
REEXEC_MARKER = "DANET_ALLOCATOR_REEXEC"

#: danet-serve's block cache (server/native/danet_blockcache.c, built by ``make``): preloaded with glibc.
BLOCK_CACHE = Path(__file__).resolve().parent / "native" / "libdanet_blockcache.so"


def allocator_env(name: str, settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The allocator's options that danet-serve adds to the environment (what is already set stays)."""
    env: dict[str, str] = {}
    if name == "system" and settings.cpu_allocator_huge_pages:
        tunables = environ.get("GLIBC_TUNABLES", "")
        if "glibc.malloc.hugetlb" not in tunables:
            env["GLIBC_TUNABLES"] = ":".join(part for part in (tunables, GLIBC_HUGE_PAGES) if part)
    if name == "mimalloc":
        if settings.cpu_allocator_huge_pages and "MIMALLOC_LARGE_OS_PAGES" not in environ:
            env["MIMALLOC_LARGE_OS_PAGES"] = "1"
        if settings.cpu_allocator_reserve_mb and "MIMALLOC_RESERVE_OS_MEMORY" not in environ:
            env["MIMALLOC_RESERVE_OS_MEMORY"] = f"{int(settings.cpu_allocator_reserve_mb)}MiB"
    return env


def find_library(name: str, dirs: Sequence[str] = LIBRARY_DIRS) -> Path | None:
    """The installed library file of allocator ``name`` (None when it is not installed)."""
    for directory in dirs:
        for filename in LIBRARIES[name]:
            candidate = Path(directory) / filename
            if candidate.is_file():
                return candidate
    return None


def _memory_map() -> str:
    """This process's ``/proc/self/maps`` (empty where there is none)."""
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


def loaded_allocator(maps: str | None = None) -> str | None:
    """Which preloadable allocator is mapped into this process (from ``/proc/self/maps``), or None."""
    maps = _memory_map() if maps is None else maps
    for name, files in LIBRARIES.items():
        if any(f"/{filename}" in maps for filename in files):
            return name
    return None


@dataclass
class PreloadPlan:
    """What :func:`reexec_with_allocator` does: nothing (``env`` empty; ``reason`` says why) or
    re-execute with ``env`` (``LD_PRELOAD``, the allocator's options) added to the environment."""

    allocator: str  # the allocator the process will run with: system, mimalloc or jemalloc
    reason: str
    env: dict[str, str] = field(default_factory=dict)
    library: Path | None = None


def preload_plan(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    loaded: str | None,
    find: Callable[[str], Path | None] = find_library,
    block_cache: Path = BLOCK_CACHE,
) -> PreloadPlan:
    """Decide how to re-execute (pure: no I/O beyond ``find``)."""
    if environ.get(REEXEC_MARKER):
        return PreloadPlan(loaded or "system", "already re-executed once")
    if sys.platform != "linux":
        return PreloadPlan("system", "allocator settings are applied on Linux only")
    if loaded is not None:  # preloaded by whoever started us (a container's LD_PRELOAD): keep it
        env = allocator_env(loaded, settings, environ)
        return PreloadPlan(loaded, f"{loaded} already loaded", _marked(env))
    wanted = settings.cpu_allocator
    if wanted == "system":
        env = allocator_env("system", settings, environ)
        if settings.cpu_block_cache and block_cache.is_file():
            env = {"LD_PRELOAD": _preload(block_cache, environ), **env}
            return PreloadPlan(
                "system", f"system malloc with the block cache from {block_cache}", _marked(env)
            )
        return PreloadPlan("system", "system malloc", _marked(env))
    library = settings.cpu_allocator_path or find(wanted)
    if library is None:
        env = allocator_env("system", settings, environ)
        package = "libmimalloc2.0 or libmimalloc3" if wanted == "mimalloc" else "libjemalloc2"
        return PreloadPlan("system", f"{wanted} is not installed (apt-get install {package})", _marked(env))
    env = {"LD_PRELOAD": _preload(library, environ), **allocator_env(wanted, settings, environ)}
    return PreloadPlan(wanted, f"{wanted} from {library}", _marked(env), Path(library))


def _preload(library: Path, environ: Mapping[str, str]) -> str:
    """``LD_PRELOAD`` with ``library`` first and what the environment already preloads kept after it."""
    return " ".join(part for part in (str(library), environ.get("LD_PRELOAD", "")) if part)


def _marked(env: dict[str, str]) -> dict[str, str]:
    return {**env, REEXEC_MARKER: "1"} if env else {}


def reexec_with_allocator(settings: Settings) -> PreloadPlan:
    """Re-execute this interpreter with the planned environment (does not return then).

    Only for a process started as ``danet-serve`` / ``python -m server.main``: the same interpreter,
    the same arguments (``sys.orig_argv``), the same environment plus the plan's variables.
    """
    plan = preload_plan(settings, os.environ, loaded=loaded_allocator())
    if not plan.env:
        return plan
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, {**os.environ, **plan.env})
    except OSError as exc:  # exec failed: keep serving as we are
        return PreloadPlan("system", f"re-executing with {plan.env} failed: {exc}")
    raise AssertionError("unreachable")  # pragma: no cover


def describe(environ: Mapping[str, str] | None = None) -> str:
    """One phrase for the start-up log: the allocator in use and its huge-page setting."""
    environ = os.environ if environ is None else environ
    name = loaded_allocator() or ("glibc malloc + block cache" if block_cache_loaded() else "glibc malloc")
    if name == "mimalloc":
        huge = environ.get("MIMALLOC_LARGE_OS_PAGES") == "1"
    elif name == "jemalloc":
        return name
    else:
        huge = "glibc.malloc.hugetlb=1" in environ.get("GLIBC_TUNABLES", "")
    return f"{name}, {'transparent huge pages' if huge else '4 KiB pages'}"


def block_cache_loaded(maps: str | None = None) -> bool:
    """Whether danet-serve's block cache is mapped into this process (from ``/proc/self/maps``)."""
    maps = _memory_map() if maps is None else maps
    return f"/{BLOCK_CACHE.name}" in maps


def _block_cache() -> Any:
    """The preloaded block cache's functions (None when it is not loaded)."""
    if sys.platform != "linux":
        return None
    try:
        lib = ctypes.CDLL(None)
        lib.danet_block_cache_trim  # noqa: B018 - present only when the library is preloaded
        lib.danet_block_cache_stats.argtypes = [ctypes.POINTER(ctypes.c_ulong)]
        return lib
    except (OSError, AttributeError):
        return None


def block_cache_stats(lib: Any = None) -> dict[str, int] | None:
    """The block cache's counters (None when it is not loaded): fresh maps, reuses, kept blocks unmapped,
    live and kept bytes, and the high-water mark of live bytes that bounds live + kept."""
    lib = lib if lib is not None else _block_cache()
    if lib is None:
        return None
    values = (ctypes.c_ulong * 6)()
    lib.danet_block_cache_stats(values)
    return dict(zip(("fresh", "reused", "unmapped", "live", "kept", "high_water"), values, strict=True))


# --- glibc's thresholds per run (models without the CPU arena) -----------------------------------------

#: mallopt parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: The parameters of a mode, in the order a mode's values are given.
MODE_PARAMETERS = (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_MMAP_MAX, M_TOP_PAD)
#: Give back (glibc's defaults for the last two): blocks from 128 KiB are mapped per allocation and
#: unmapped when freed; the heap's top is trimmed past 128 KiB. Memory follows what is live.
GIVE_BACK = (128 * 1024, 128 * 1024, 65536, 128 * 1024)
#: Reuse: no block is mapped on its own (M_MMAP_MAX 0), so every block comes from a heap and stays there
#: when freed, for the next run; the heap is not trimmed below 1 GiB, and a thread's heap that empties is
#: kept (M_TOP_PAD 64 MiB, a thread heap's size; glibc deletes an empty one whatever the trim threshold).
#: A block larger than a thread's heap (64 MiB) is still mapped; danet-export's attention chunks are 16 MiB.
REUSE = (32 * 1024 * 1024, 1024 * 1024 * 1024, 0, 64 * 1024 * 1024)


class HeapModes:
    """glibc's malloc parameters (mmap threshold and maximum, trim threshold, top pad), chosen per
    onnxruntime run by the run's pixels.

    A run of up to ``reuse_max_pixels`` input pixels reuses freed blocks (:data:`REUSE`): no page faults
    and no zeroing after the first run of that size (DANet-R50 at 512x512 exported with 16 MiB attention
    chunks: none per pass, measured), at the cost of keeping that size's high-water mark.
    A larger run first hands that memory back (``malloc_trim(0)``) and then maps its activations fresh
    (:data:`GIVE_BACK`), so its peak is its live set. Every large run that starts with none in flight
    hands back, not only the first after small runs: each leaves free blocks scattered in the thread
    heaps, which only a trim returns (DANet-R50, eight 1024x2048 runs in a row: thread heaps 16 -> 60 MB
    and the server's peak 955 -> 1012 MB; trimmed before each, 9-17 MB and 969 MB; measured). The
    thresholds are process-wide: while any large run is in flight every run gives back. A no-op where
    glibc is not the C library.

    :meth:`call` also runs a large run on its own thread (one at a time) when small runs reuse: glibc
    gives each thread its own malloc arena, and the heaps that reuse grew in the small runs' arena, even
    trimmed, would scatter the large run's small blocks (DANet-R50 1024x2048 after 512x512 runs: 953 MB
    peak on the same thread, 895 MB on its own, 892 MB without reuse; measured).
    """

    def __init__(self, libc: Any = None, block_cache: Any = None) -> None:
        self._lock = threading.Lock()
        self._large = 0
        self._mode: tuple[int, int, int, int] | None = None
        self._libc = libc if libc is not None else _glibc()
        self._block_cache = block_cache if block_cache is not None else _block_cache()
        self._large_runs: _LargeRuns | None = None
        self.trims = 0

    def call(self, pixels: int, reuse_max_pixels: int, fn: Callable[[], T]) -> T:
        """``fn()`` as one run of ``pixels`` input pixels (batch included): under :meth:`run`, and on the
        large-run thread when it is a large run while small runs reuse (``reuse_max_pixels`` > 0)."""
        with self.run(pixels, reuse_max_pixels):
            if self._libc is None or pixels <= reuse_max_pixels or reuse_max_pixels <= 0:
                return fn()
            return self._large_thread().submit(fn).result()

    def prepare(self) -> None:
        """Start the large-run thread now, while few threads hold malloc arenas (a thread started when
        glibc has made all it will, 8 per core, shares another thread's arena)."""
        if self._libc is not None:
            self._large_thread().submit(lambda: None).result()

    def _large_thread(self) -> _LargeRuns:
        with self._lock:
            if self._large_runs is None:
                self._large_runs = _LargeRuns()
            return self._large_runs

    @property
    def available(self) -> bool:
        return self._libc is not None

    @contextmanager
    def run(self, pixels: int, reuse_max_pixels: int) -> Iterator[None]:
        """Around one run of ``pixels`` input pixels (batch included)."""
        if self._libc is None:
            yield
            return
        large = pixels > reuse_max_pixels
        with self._lock:
            if large:
                if self._mode != GIVE_BACK:
                    self._set(GIVE_BACK)
                if self._large == 0:
                    self._hand_back()
                self._large += 1
            elif self._large == 0 and self._mode != REUSE:
                self._set(REUSE)
        try:
            yield
        finally:
            if large:
                with self._lock:
                    self._large -= 1
                    if self._large == 0 and self._block_cache is not None:
                        # What the large run kept for itself goes back: between requests, what is live.
                        self._block_cache.danet_block_cache_trim()

    def _hand_back(self) -> None:
        """What the small runs kept goes back to the system. ``malloc_trim(0)`` releases the free pages of
        every arena and the main heap's top, but not a thread heap's top or the thread heaps that reuse
        kept (``M_TOP_PAD``): glibc shrinks and deletes those only when a block is freed in that arena. So
        a block of 96 KiB (under the mmap threshold, over glibc's 64 KiB consolidation threshold) is freed
        here first, on the thread that ran the small runs, with the give-back parameters in force."""
        self._libc.free(self._libc.malloc(96 * 1024))
        self._libc.malloc_trim(0)
        if self._block_cache is not None:
            self._block_cache.danet_block_cache_trim()
        self.trims += 1

    def _set(self, mode: tuple[int, int, int, int]) -> None:
        for param, value in zip(MODE_PARAMETERS, mode, strict=True):
            self._libc.mallopt(param, value)
        self._mode = mode


class _LargeRuns:
    """One daemon thread that runs the large runs, one at a time (a daemon, as the batcher's workers are,
    so that a run still going when the server exits does not hold the process)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="danet-large-run", daemon=True).start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((fn, future))
        return future

    def _serve(self) -> None:
        while True:
            fn, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, which re-raises it
                future.set_exception(exc)
            del fn, future  # not the last run's input and outputs kept alive until the next one


def _glibc() -> Any:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - present in every glibc; the probe fails elsewhere
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


#: The process's one set of parameters (mallopt is process-wide).
HEAP = HeapModes()

#: glibc's variables for the parameters HEAP sets: one set by the user turns HEAP off.
USER_PARAMETERS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")


def heap_modes_apply(environ: Mapping[str, str] | None = None) -> bool:
    """Whether :data:`HEAP` chooses the parameters: glibc malloc, and none of them set by the user."""
    environ = os.environ if environ is None else environ
    user_set = any(name in environ for name in USER_PARAMETERS)
    return HEAP.available and not user_set and loaded_allocator() is None
