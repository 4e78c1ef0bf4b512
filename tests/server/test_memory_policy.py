"""The per-model CPU memory policy: the arena for small models, none for large ones."""

from __future__ import annotations

import platform

import pytest

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
