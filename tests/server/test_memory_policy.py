"""The per-model CPU memory policy: the arena for small models, none for large ones."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from server.allocator import (
    BLOCK_CACHE,
    HEAP,
    M_MMAP_MAX,
    M_MMAP_THRESHOLD,
    M_TOP_PAD,
    M_TRIM_THRESHOLD,
    REEXEC_MARKER,
    HeapModes,
    PreloadPlan,
    find_library,
    heap_modes_apply,
    loaded_allocator,
    preload_plan,
)
from server.engine import Engine
from server.instance import ARENA_SHRINKAGE
from server.providers import session_options, use_cpu_arena
from server.settings import Settings
from tests.conftest import make_scene


def test_small_models_keep_the_arena_large_ones_do_not() -> None:
    settings = Settings()
    assert settings.cpu_mem_arena is True and settings.cpu_arena_max_model_mb == 64.0
    assert use_cpu_arena(settings, 3_300_000)  # the embedded default model
    assert not use_cpu_arena(settings, 190_000_000)  # DANet-R50
    assert session_options(settings, 3_300_000).enable_cpu_mem_arena is True
    assert session_options(settings, 190_000_000).enable_cpu_mem_arena is False


def test_without_the_arena_every_tensor_is_freed_at_its_last_use() -> None:
    """cpu_buffer_reuse: the planner's buffer reuse stays on with the arena, off without it by default."""
    settings = Settings()
    assert settings.cpu_buffer_reuse is False
    assert session_options(settings, 3_300_000).enable_mem_reuse is True
    assert session_options(settings, 190_000_000).enable_mem_reuse is False
    reusing = Settings(cpu_buffer_reuse=True)
    assert session_options(reusing, 190_000_000).enable_mem_reuse is True


def test_expert_switches() -> None:
    assert use_cpu_arena(Settings(cpu_arena_max_model_mb=None), 10**10)
    assert not use_cpu_arena(Settings(cpu_mem_arena=False), 1)
    assert Settings(cpu_arena_max_model_mb=500).cpu_arena_max_model_mb == 500.0


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int] | tuple[str, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1

    def malloc(self, size: int) -> int:
        self.calls.append(("malloc", size))
        return 4096

    def free(self, address: int) -> None:
        self.calls.append(("free", address))


def _mode(
    mmap_threshold: int, trim_threshold: int, mmap_max: int, top_pad: int
) -> list[tuple[str, int, int]]:
    params = (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_MMAP_MAX, M_TOP_PAD)
    return [
        ("mallopt", param, value)
        for param, value in zip(params, (mmap_threshold, trim_threshold, mmap_max, top_pad), strict=True)
    ]


def test_small_runs_reuse_the_heap_and_a_large_run_hands_it_back_first() -> None:
    libc = FakeLibc()
    heap = HeapModes(libc)
    reuse = _mode(32 << 20, 1 << 30, 0, 64 << 20)  # nothing mapped on its own; emptied thread heaps kept
    give_back = _mode(128 << 10, 128 << 10, 65536, 128 << 10)  # glibc's defaults for the last two
    with heap.run(512 * 512, 1024 * 1024):
        pass
    assert libc.calls == reuse
    with heap.run(512 * 512, 1024 * 1024):  # already reusing: nothing to do
        pass
    assert len(libc.calls) == 4
    libc.calls.clear()
    with heap.run(1024 * 2048, 1024 * 1024):
        assert libc.calls == [*give_back, ("malloc", 96 << 10), ("free", 4096), ("trim", 0)]
        with heap.run(512 * 512, 1024 * 1024):  # a small run while a large one is in flight: hands back too
            pass
        assert len(libc.calls) == 7
    with heap.run(512 * 512, 1024 * 1024):  # the large run has ended: reuse again
        pass
    assert libc.calls[7:] == reuse
    assert heap.trims == 1
    with heap.run(10, 0):  # 0 = every run hands back
        pass
    assert heap.trims == 2
    libc.calls.clear()
    # already giving back, nothing in flight: what the last run left goes back; the second, started while
    # the first is in flight, does not trim again
    with heap.run(10, 0), heap.run(20, 0):
        pass
    assert libc.calls == [("malloc", 96 << 10), ("free", 4096), ("trim", 0)]
    assert heap.trims == 3


class FakeBlockCache:
    def __init__(self) -> None:
        self.trims = 0

    def danet_block_cache_trim(self) -> None:
        self.trims += 1


def test_a_large_run_empties_the_block_cache_when_it_starts_and_when_it_ends() -> None:
    cache = FakeBlockCache()
    heap = HeapModes(FakeLibc(), cache)
    with heap.run(512 * 512, 1024 * 1024):  # small runs keep their blocks
        pass
    assert cache.trims == 0
    with heap.run(1024 * 2048, 1024 * 1024):
        assert cache.trims == 1
        with heap.run(1024 * 2048, 1024 * 1024):  # a second large run in flight: no trim under it
            pass
        assert cache.trims == 1
    assert cache.trims == 2  # the last large run ended: what it kept goes back


_BLOCK_CACHE_SCRIPT = """
import numpy as np
from server.allocator import _block_cache, block_cache_stats, describe
lib = _block_cache()
base = block_cache_stats()
def step():
    s = block_cache_stats()
    d = {k: s[k] - base[k] for k in ("fresh", "reused", "unmapped")}
    assert s["live"] + s["kept"] <= s["high_water"], s
    return [d["fresh"], d["reused"], d["unmapped"], (s["kept"] - base["kept"]) // 4096]
a = [np.ones(2_000_000) for _ in range(4)]  # four 16 MB blocks, mapped afresh
del a
print(step())
b = [np.ones(2_000_000) for _ in range(4)]  # the same size again: the kept blocks, nothing mapped
del b
print(step())
c = np.ones(3_000_000)  # a new size: kept blocks are unmapped until live + kept + 24 MB <= the high-water mark
print(step())
lib.danet_block_cache_trim()
print(step())
print(describe())
"""


@pytest.mark.skipif(not BLOCK_CACHE.is_file(), reason="the block cache is not built (make builds it with cc)")
def test_the_block_cache_reuses_freed_blocks_without_passing_the_live_high_water_mark() -> None:
    env = {**os.environ, "LD_PRELOAD": str(BLOCK_CACHE), "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_CACHE_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    pages = 3907  # 16,000,000 bytes in 4 KiB pages
    assert lines[0] == str([4, 0, 0, 4 * pages])
    assert lines[1] == str([4, 4, 0, 4 * pages])
    assert lines[2] == str([5, 4, 2, 2 * pages])  # two of the four kept blocks given back first
    assert lines[3] == str([5, 4, 4, 0])
    assert lines[4].startswith("glibc malloc + block cache")


def test_a_large_run_runs_on_its_own_thread_while_small_runs_reuse() -> None:
    heap = HeapModes(FakeLibc())
    here = threading.current_thread().name
    assert heap.call(100, 1000, lambda: threading.current_thread().name) == here
    large = heap.call(10_000, 1000, lambda: threading.current_thread().name)
    assert large.startswith("danet-large-run")
    assert heap.call(10_000, 0, lambda: threading.current_thread().name) == here  # nothing reuses: no hop
    with pytest.raises(ZeroDivisionError):  # errors come back to the caller
        heap.call(10_000, 1000, lambda: 1 // 0)


def test_heap_modes_stand_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    heap = HeapModes(libc=None)
    heap._libc = None  # as where glibc is not the C library
    with heap.run(1, 0):
        pass
    assert not heap.available
    if HEAP.available:
        assert heap_modes_apply({}) is (loaded_allocator() is None)
        for name in (
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_MMAP_MAX_",
            "MALLOC_TOP_PAD_",
        ):
            assert heap_modes_apply({name: "65536"}) is False  # the user decided


_GIVE_BACK_SCRIPT = """
import ctypes, json, sys
from server.allocator import HEAP
block_mib, count, on_thread = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "thread"
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024

def churn():  # blocks written and freed, all but the first
    blocks = [libc.malloc(block_mib << 20) for _ in range(count)]
    for b in blocks:
        libc.memset(b, 1, block_mib << 20)
    for b in reversed(blocks[1:]):
        libc.free(b)
    return blocks[0]

def main():
    start = rss()
    with HEAP.run(100, 1000):
        keep = churn()
    kept = rss() - start
    with HEAP.run(10_000, 1000):
        pass
    after_trim = rss() - start
    with HEAP.run(10_000, 1000):
        libc.free(churn())
    libc.free(keep)
    print(json.dumps({"kept": kept, "after_trim": after_trim, "large": rss() - start}))

if on_thread:  # a thread arena, whose heaps malloc_trim alone does not hand back
    import threading
    worker = threading.Thread(target=main)
    worker.start()
    worker.join()
else:
    main()
"""


@pytest.mark.skipif(not HEAP.available, reason="glibc malloc only")
@pytest.mark.parametrize(
    "block_mib, count, where, kept_mb",  # 40 MiB: past glibc's largest mmap threshold
    [(1, 400, "main", 350), (40, 6, "main", 180), (1, 400, "thread", 350), (40, 6, "thread", 180)],
)
def test_glibc_keeps_small_runs_blocks_and_a_large_run_gives_them_back(
    block_mib: int, count: int, where: str, kept_mb: int
) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))
    }
    done = subprocess.run(
        [sys.executable, "-c", _GIVE_BACK_SCRIPT, str(block_mib), str(count), where],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kept"] >= kept_mb  # reuse: the freed blocks stay resident
    assert result["after_trim"] < 50  # handed back before the large run
    if where == "main":  # on a thread, 1 MiB blocks left one 64 MiB thread heap resident afterwards (63 MB)
        assert result["large"] < 50  # the large run's blocks were mapped and unmapped


def test_memory_patterns_follow_the_arena() -> None:
    assert session_options(Settings(), 3_300_000).enable_mem_pattern is True
    assert session_options(Settings(), 190_000_000).enable_mem_pattern is False


# --- the C allocator set up by danet-serve (server/allocator.py) -------------------------------------

MIMALLOC = Path("/opt/lib/libmimalloc.so.2")
JEMALLOC = Path("/opt/lib/libjemalloc.so.2")
HUGE = "glibc.malloc.hugetlb=1"


def _finder(*present: str) -> Callable[[str], Path | None]:
    return lambda name: {"mimalloc": MIMALLOC, "jemalloc": JEMALLOC}[name] if name in present else None


def _plan(
    settings: Settings,
    environ: dict[str, str] | None = None,
    loaded: str | None = None,
    block_cache: Path = Path("/nonexistent/libdanet_blockcache.so"),
) -> PreloadPlan:
    return preload_plan(
        settings, environ or {}, loaded=loaded, find=_finder("mimalloc", "jemalloc"), block_cache=block_cache
    )


def test_the_block_cache_is_preloaded_with_glibc_when_it_is_built(tmp_path: Path) -> None:
    library = tmp_path / "libdanet_blockcache.so"
    library.write_bytes(b"")
    plan = _plan(Settings(), {"LD_PRELOAD": "/x/libother.so"}, block_cache=library)
    assert plan.allocator == "system" and plan.env["LD_PRELOAD"] == f"{library} /x/libother.so"
    assert plan.env["GLIBC_TUNABLES"] == HUGE
    assert "LD_PRELOAD" not in _plan(Settings(cpu_block_cache=False), block_cache=library).env
    mimalloc = _plan(Settings(cpu_allocator="mimalloc"), block_cache=library)
    assert mimalloc.env["LD_PRELOAD"] == str(MIMALLOC)  # another allocator: no block cache under it
    assert "LD_PRELOAD" not in _plan(Settings()).env  # not built: plain glibc


def test_default_is_glibc_with_huge_pages_added_to_the_users_tunables() -> None:
    plan = _plan(Settings())
    assert plan.allocator == "system" and plan.library is None and "LD_PRELOAD" not in plan.env
    assert plan.env == {"GLIBC_TUNABLES": HUGE, REEXEC_MARKER: "1"}
    plan = _plan(Settings(), {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert plan.env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE}"


def test_nothing_to_do_means_no_reexec() -> None:
    assert _plan(Settings(cpu_allocator_huge_pages=False)).env == {}
    assert _plan(Settings(), {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}).env == {}  # the user decided
    # the re-executed process never re-executes again, whatever it finds
    assert _plan(Settings(cpu_allocator="mimalloc"), {REEXEC_MARKER: "1"}).env == {}


def test_mimalloc_is_preloaded_with_its_options_and_an_existing_preload_kept() -> None:
    plan = _plan(Settings(cpu_allocator="mimalloc"), {"LD_PRELOAD": "/x/libother.so"})
    assert plan.allocator == "mimalloc" and plan.library == MIMALLOC
    assert plan.env["LD_PRELOAD"] == f"{MIMALLOC} /x/libother.so"
    assert plan.env["MIMALLOC_LARGE_OS_PAGES"] == "1" and "GLIBC_TUNABLES" not in plan.env
    assert "MIMALLOC_RESERVE_OS_MEMORY" not in plan.env  # memory follows what is live by default
    settings = Settings(
        cpu_allocator="mimalloc", cpu_allocator_reserve_mb=2048, cpu_allocator_huge_pages=False
    )
    plan = _plan(settings)
    assert plan.env["MIMALLOC_RESERVE_OS_MEMORY"] == "2048MiB" and "MIMALLOC_LARGE_OS_PAGES" not in plan.env
    environ = {"MIMALLOC_RESERVE_OS_MEMORY": "1GiB"}
    assert "MIMALLOC_RESERVE_OS_MEMORY" not in _plan(settings, environ).env  # the environment already says


def test_jemalloc_an_explicit_path_and_a_missing_library() -> None:
    plan = _plan(Settings(cpu_allocator="jemalloc"))
    assert plan.library == JEMALLOC and plan.env["LD_PRELOAD"] == str(JEMALLOC)
    custom = Path("/custom/libjemalloc.so.2")
    plan = _plan(Settings(cpu_allocator="jemalloc", cpu_allocator_path=custom))
    assert plan.library == custom and plan.env["LD_PRELOAD"] == str(custom)
    missing = preload_plan(Settings(cpu_allocator="mimalloc"), {}, loaded=None, find=_finder("jemalloc"))
    assert missing.allocator == "system" and "apt-get install libmimalloc" in missing.reason
    assert missing.env == {"GLIBC_TUNABLES": HUGE, REEXEC_MARKER: "1"}  # still glibc on huge pages


def test_an_allocator_preloaded_by_the_caller_is_kept() -> None:
    plan = _plan(Settings(), {"LD_PRELOAD": str(MIMALLOC)}, loaded="mimalloc")
    assert plan.allocator == "mimalloc" and "LD_PRELOAD" not in plan.env
    assert plan.env["MIMALLOC_LARGE_OS_PAGES"] == "1"


def test_loaded_allocator_reads_the_memory_map() -> None:
    line = "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/{}\n"
    assert loaded_allocator(line.format("libmimalloc.so.2.0")) == "mimalloc"
    assert loaded_allocator(line.format("libjemalloc.so.2")) == "jemalloc"
    assert loaded_allocator(line.format("libc.so.6")) is None


def _reexec(settings: str) -> list[str]:
    code = (
        "import os\n"
        "from server.allocator import describe, reexec_with_allocator\n"
        f"from server.settings import Settings\nreexec_with_allocator(Settings({settings}))\n"
        "print(describe())\n"
    )
    strip = ("LD_PRELOAD", "GLIBC_TUNABLES", REEXEC_MARKER)
    env = {
        k: v for k, v in os.environ.items() if k not in strip and not k.startswith(("MIMALLOC_", "DANET_"))
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


@pytest.mark.skipif(sys.platform != "linux", reason="the allocator is set up on Linux only")
def test_the_process_reexecutes_itself_on_huge_pages() -> None:
    glibc = "glibc malloc + block cache" if BLOCK_CACHE.is_file() else "glibc malloc"
    assert _reexec("") == [f"{glibc}, transparent huge pages"]
    assert _reexec("cpu_allocator_huge_pages=False") == [f"{glibc}, 4 KiB pages"]
    assert _reexec("cpu_block_cache=False") == ["glibc malloc, transparent huge pages"]


@pytest.mark.skipif(find_library("mimalloc") is None, reason="mimalloc is not installed (libmimalloc2.0)")
def test_the_process_reexecutes_itself_with_mimalloc() -> None:
    assert _reexec("cpu_allocator='mimalloc'") == ["mimalloc, transparent huge pages"]


def test_a_model_without_the_arena_runs_under_the_heap_modes(tiny_onnx: Path) -> None:
    """Engine -> ModelInstance -> HEAP: small runs reuse, a run over the limit trims first; same answers."""
    settings = Settings(
        models=[tiny_onnx],
        providers=["CPUExecutionProvider"],
        warmup_sizes=["32x32"],
        cpu_arena_max_model_mb=0,  # the tiny model takes the large-model path
        cpu_heap_reuse_max_pixels=32 * 32,
        infer_at_preferred_size=False,
    )
    engine = Engine(settings)
    arena_engine = Engine(settings.model_copy(update={"cpu_arena_max_model_mb": 64.0}))
    direct = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])

    async def scenario() -> list[tuple[int, bool]]:
        await engine.start()
        await arena_engine.start()
        try:
            instance = engine.instance(None)
            assert instance.handle.cpu_arena is False
            assert instance.handle.session.get_session_options().enable_mem_reuse is False
            assert arena_engine.instance(None).handle.session.get_session_options().enable_mem_reuse is True
            assert arena_engine.instance(None).heap_reuse_max_pixels is None  # the arena owns its memory
            assert instance.heap_reuse_max_pixels == (32 * 32 if heap_modes_apply() else None)
            seen = []
            for size in (24, 48, 24):
                image = make_scene(size, size, seed=size)[None]
                trims = HEAP.trims
                out = await engine.infer(None, image, ["labels"])
                expected = direct.run(["labels"], {"image": image})[0]
                np.testing.assert_array_equal(out["labels"], expected)
                seen.append((size, HEAP.trims > trims))
            return seen
        finally:
            await engine.close()
            await arena_engine.close()

    seen = asyncio.run(scenario())
    if heap_modes_apply():
        assert seen == [(24, False), (48, True), (24, False)]


def test_a_shrinking_arena_runs_without_patterns_and_asks_each_run_to_shrink(tiny_onnx: Path) -> None:
    """cpu_arena_shrink: the session has the arena but no memory patterns, and every run carries
    onnxruntime's shrinkage option for the CPU arena; the answers are the same."""
    base = Settings(
        models=[tiny_onnx],
        providers=["CPUExecutionProvider"],
        warmup_sizes=["32x32"],
        infer_at_preferred_size=False,
    )
    assert session_options(base, 1).enable_mem_pattern is True
    shrinking = base.model_copy(update={"cpu_arena_shrink": True})
    options = session_options(shrinking, 1)
    assert options.enable_cpu_mem_arena is True and options.enable_mem_pattern is False
    direct = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])

    async def scenario(settings: Settings) -> list[str]:
        engine = Engine(settings)
        await engine.start()
        seen: list[str] = []
        try:
            instance = engine.instance(None)
            run = instance.handle.session.run

            def recording(names: Any, feeds: Any, run_options: Any = None) -> Any:
                try:
                    seen.append(run_options.get_run_config_entry(ARENA_SHRINKAGE))
                except RuntimeError:  # not set
                    seen.append("")
                return run(names, feeds, run_options)

            instance.handle.session = SimpleNamespace(run=recording)
            image = make_scene(40, 40, seed=4)[None]
            out = await engine.infer(None, image, ["labels"])
            np.testing.assert_array_equal(out["labels"], direct.run(["labels"], {"image": image})[0])
        finally:
            await engine.close()
        return seen

    assert asyncio.run(scenario(shrinking)) == ["cpu:0"]
    assert asyncio.run(scenario(base)) == [""]
