"""Resident memory of processes, read from ``/proc`` (Linux) with a ``resource`` fallback."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path


def _status_field_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_bytes(pid: int | None = None) -> int | None:
    """Current resident set size of ``pid`` (default: this process), or None where /proc is missing."""
    kib = _status_field_kib(pid if pid is not None else os.getpid(), "VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes(pid: int | None = None) -> int | None:
    """Peak resident set size (high-water mark) of ``pid`` since start or the last :func:`reset_peak`."""
    kib = _status_field_kib(pid if pid is not None else os.getpid(), "VmHWM")
    if kib is not None:
        return kib * 1024
    if pid is None or pid == os.getpid():
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is KiB on Linux, bytes on macOS.
        return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    return None


def reset_peak(pid: int | None = None) -> bool:
    """Reset the high-water mark so that the next peak reading covers only what follows (Linux >= 4.0).

    Returns False where the kernel or permissions do not allow it; the peak then stays cumulative.
    """
    try:
        Path(f"/proc/{pid if pid is not None else os.getpid()}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def mib(value: int | None) -> float | None:
    return None if value is None else value / (1024 * 1024)
