"""The system shared memory registry on its own: names and keys validated, bounds, limits, unmapping on
unregister and at shutdown. Through tritonclient over REST and gRPC: tests/grpc/test_grpc_shm.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.errors import InvalidOption
from server.kserve.shm import SHM_ROOT, SharedMemoryRegistry

SIZE = 4096


@pytest.fixture
def key() -> Iterator[str]:
    name = f"danet_test_{os.getpid()}_{os.urandom(4).hex()}"
    path = SHM_ROOT / name
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    yield f"/{name}"
    path.unlink(missing_ok=True)


def mapped(key: str) -> bool:
    return f"/dev/shm{key}" in Path("/proc/self/maps").read_text()


def test_read_write_and_bounds(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", key, 100, 200)
    ref = registry.reference(
        {"shared_memory_region": "r", "shared_memory_byte_size": 50, "shared_memory_offset": 10}, "t"
    )
    assert ref is not None and ref.read() == bytes(range(110, 160))
    ref.write(b"\xff" * 50)
    assert (SHM_ROOT / key[1:]).read_bytes()[110:160] == b"\xff" * 50
    with pytest.raises(InvalidOption, match="beyond"):
        registry.reference(
            {"shared_memory_region": "r", "shared_memory_byte_size": 200, "shared_memory_offset": 1}, "t"
        )
    with pytest.raises(InvalidOption, match="both"):
        registry.reference({"shared_memory_region": "r"}, "t")
    with pytest.raises(InvalidOption, match="integer"):
        registry.reference({"shared_memory_region": "r", "shared_memory_byte_size": -1}, "t")
    assert registry.reference({"binary_data_size": 3}, "t") is None
    with pytest.raises(InvalidOption, match="beyond"):
        registry.register("big", key, 1, SIZE)
    registry.close()


@pytest.mark.parametrize("bad", ["", "../x", "/a/b", "/..", "a\x00b", "x" * 300])
def test_keys_stay_in_the_shm_directory(bad: str) -> None:
    with pytest.raises(InvalidOption):
        SharedMemoryRegistry().register("r", bad, 0, 16)


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 300, 7])
def test_region_names_are_validated(key: str, bad: object) -> None:
    with pytest.raises(InvalidOption):
        SharedMemoryRegistry().register(bad, key, 0, 16)


def test_unmapped_on_unregister_and_close(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("a", key, 0, 16)
    ref = registry.reference({"shared_memory_region": "a", "shared_memory_byte_size": 16}, "t")
    assert mapped(key)
    registry.unregister("a")
    assert not mapped(key)
    assert ref is not None
    with pytest.raises(InvalidOption, match="unregistered"):
        ref.write(b"x")  # a request that still held it is refused, not crashed
    registry.unregister("never-registered")  # fine, as in Triton
    registry.register("b", key, 0, 16)
    registry.register("c", key, 16, 16)
    assert [r["name"] for r in registry.status()] == ["b", "c"]
    registry.close()
    assert not mapped(key) and registry.status() == []


def test_limits_and_switch(key: str) -> None:
    registry = SharedMemoryRegistry(max_regions=1)
    registry.register("a", key, 0, 16)
    with pytest.raises(InvalidOption, match="limit 1"):
        registry.register("b", key, 0, 16)
    with pytest.raises(InvalidOption, match="already registered"):
        registry.register("a", key, 0, 16)
    registry.close()
    with pytest.raises(InvalidOption, match="allow_client_shm"):
        SharedMemoryRegistry(enabled=False).register("a", key, 0, 16)
