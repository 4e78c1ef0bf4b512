"""The per-model CPU memory policy: the arena for small models, none for large ones."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from server.allocator import REEXEC_MARKER, PreloadPlan, find_library, loaded_allocator, preload_plan
from server.providers import pin_mmap_threshold, session_options, use_cpu_arena
from server.settings import Settings


def test_small_models_keep_the_arena_large_ones_do_not() -> None:
    settings = Settings()
    assert settings.cpu_mem_arena is True and settings.cpu_arena_max_model_mb == 64.0
    assert use_cpu_arena(settings, 3_300_000)  # the embedded default model
    assert not use_cpu_arena(settings, 190_000_000)  # DANet-R50
    assert session_options(settings, 3_300_000).enable_cpu_mem_arena is True
    assert session_options(settings, 190_000_000).enable_cpu_mem_arena is False


def test_expert_switches() -> None:
    assert use_cpu_arena(Settings(cpu_arena_max_model_mb=None), 10**10)
    assert not use_cpu_arena(Settings(cpu_mem_arena=False), 1)
    assert Settings(cpu_arena_max_model_mb=500).cpu_arena_max_model_mb == 500.0


def test_mmap_threshold_is_pinned_unless_the_user_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pin = pin_mmap_threshold.__wrapped__  # uncached
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert pin() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    if platform.libc_ver()[0] == "glibc":
        assert pin() is True


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
    settings: Settings, environ: dict[str, str] | None = None, loaded: str | None = None
) -> PreloadPlan:
    return preload_plan(settings, environ or {}, loaded=loaded, find=_finder("mimalloc", "jemalloc"))


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
    assert _reexec("") == ["glibc malloc, transparent huge pages"]
    assert _reexec("cpu_allocator_huge_pages=False") == ["glibc malloc, 4 KiB pages"]


@pytest.mark.skipif(find_library("mimalloc") is None, reason="mimalloc is not installed (libmimalloc2.0)")
def test_the_process_reexecutes_itself_with_mimalloc() -> None:
    assert _reexec("cpu_allocator='mimalloc'") == ["mimalloc, transparent huge pages"]
