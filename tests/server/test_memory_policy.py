"""The per-model CPU memory policy: the arena for small models, none for large ones."""

from __future__ import annotations

from server.providers import session_options, use_cpu_arena
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
