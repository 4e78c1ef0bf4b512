"""Triton's system shared memory extension: clients register POSIX shared memory regions
(``shm_open`` objects, as ``tritonclient.utils.shared_memory`` creates them), then name them in a tensor's
parameters (``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset``) so that the
input is read from, or the output written to, the region instead of the request and reply.

One registry serves REST and gRPC. Every offset and size is checked against the region before any work
starts (a 400 / INVALID_ARGUMENT). A region is mapped from registration to unregistration (or shutdown);
reads and writes hold its lock, so unmapping waits for one in progress, and a request that reaches a region
unregistered in the meantime is refused with a 400.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import InvalidOption

SHM_ROOT = Path("/dev/shm")  # where Linux keeps shm_open objects
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
PARAMETERS = (REGION, BYTE_SIZE, OFFSET)
MAX_NAME_BYTES = 255


class Region:
    """One registered region: ``byte_size`` bytes from ``offset`` of the shared memory object ``key``."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._lock = threading.Lock()
        path = SHM_ROOT / _object_name(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidOption(
                f"unable to open shared memory region {name!r}: key {key!r}: {exc.strerror or exc}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidOption(f"shared memory key {key!r} is not a shared memory object")
            if offset + byte_size > info.st_size:
                raise InvalidOption(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} is beyond the "
                    f"{info.st_size} bytes of {key!r}"
                )
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._base = offset - start
            self._map = mmap.mmap(fd, self._base + byte_size, offset=start)
        finally:
            os.close(fd)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def read(self, ref: ShmRef) -> bytes:
        start = self._base + ref.offset
        with self._lock:
            self._check_open()
            return self._map[start : start + ref.byte_size]  # a copy: the client may rewrite the region

    def write(self, ref: ShmRef, data: bytes) -> None:
        if len(data) > ref.byte_size:  # checked before inference; a last guard
            raise InvalidOption(f"{len(data)} bytes do not fit the {ref.byte_size} given in {ref.region!r}")
        start = self._base + ref.offset
        with self._lock:
            self._check_open()
            self._map[start : start + len(data)] = data

    def _check_open(self) -> None:
        if self._map.closed:
            raise InvalidOption(f"shared memory region {self.name!r} was unregistered while the request ran")

    def close(self) -> None:
        with self._lock:
            self._map.close()


@dataclass(frozen=True)
class ShmRef:
    """A tensor's place in a region, checked against it; holds the region while the request runs."""

    region: str
    byte_size: int
    offset: int
    mapped: Region

    def read(self) -> bytes:
        return self.mapped.read(self)

    def write(self, data: bytes) -> None:
        self.mapped.write(self, data)


class SharedMemoryRegistry:
    def __init__(self, *, enabled: bool = True, max_regions: int = 64) -> None:
        self.enabled = enabled
        self.max_regions = max_regions
        self._lock = threading.Lock()
        self._regions: dict[str, Region] = {}

    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        """Map ``byte_size`` bytes from ``offset`` of the shm object ``key`` as ``name`` (values as received)."""
        if not self.enabled:
            raise InvalidOption("this server does not accept shared memory regions (allow_client_shm is off)")
        check_name(name, "region name")
        _object_name(key)
        for what, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOption(f"shared memory {what} must be an integer >= 0, got {value!r}")
        if byte_size == 0:
            raise InvalidOption(f"shared memory region {name!r} must have byte_size > 0")
        with self._lock:
            if name in self._regions:
                raise InvalidOption(f"shared memory region {name!r} is already registered")
            if len(self._regions) >= self.max_regions:
                raise InvalidOption(
                    f"{len(self._regions)} shared memory regions are registered (limit {self.max_regions}); "
                    "unregister one first"
                )
            self._regions[name] = Region(name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unmap one region (unknown names are fine, as in Triton), or every region when ``name`` is empty."""
        with self._lock:
            if name:
                gone = [self._regions.pop(name)] if name in self._regions else []
            else:
                gone, self._regions = list(self._regions.values()), {}
        for region in gone:
            region.close()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        with self._lock:
            if not name:
                return [region.status() for region in self._regions.values()]
            return [self._region(name).status()]

    def reference(self, parameters: Mapping[str, Any], tensor: str) -> ShmRef | None:
        """The tensor's region from its parameters (None when it names none), bounds checked."""
        if not any(p in parameters for p in PARAMETERS):
            return None
        region = parameters.get(REGION)
        size = parameters.get(BYTE_SIZE)
        offset = parameters.get(OFFSET, 0)
        if not isinstance(region, str) or size is None:
            raise InvalidOption(f"tensor {tensor!r}: shared memory needs both {REGION} and {BYTE_SIZE}")
        for what, value in ((BYTE_SIZE, size), (OFFSET, offset)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOption(f"tensor {tensor!r}: {what} must be an integer >= 0, got {value!r}")
        with self._lock:
            mapped = self._region(region)
        if offset + size > mapped.byte_size:
            raise InvalidOption(
                f"tensor {tensor!r}: {OFFSET} {offset} + {BYTE_SIZE} {size} is beyond shared memory region "
                f"{region!r} of {mapped.byte_size} bytes"
            )
        return ShmRef(region, size, offset, mapped)

    def close(self) -> None:
        """Unmap every region (shutdown)."""
        self.unregister()

    def _region(self, name: str) -> Region:
        try:
            return self._regions[name]
        except KeyError:
            raise InvalidOption(f"unable to find system shared memory region {name!r}") from None


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidOption(f"{what} must be a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidOption(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidOption(f"{what} {name!r} contains control characters")
    return name


def _object_name(key: Any) -> str:
    """``/name`` (as given to ``shm_open``) -> ``name``; nothing that could leave the shm directory."""
    check_name(key, "shared memory key")
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", ".."):
        raise InvalidOption(f"shared memory key {key!r} must be one shm_open name, such as '/input0'")
    return name
