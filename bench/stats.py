"""Latency statistics: percentiles over a list of per-request durations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of request latencies in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def from_seconds(cls, durations_s: Sequence[float]) -> LatencyStats:
        """Summarise durations given in seconds (reported in milliseconds)."""
        ms = [d * 1000.0 for d in durations_s]
        return cls(
            n=len(ms),
            p50=percentile(ms, 50),
            p95=percentile(ms, 95),
            p99=percentile(ms, 99),
            mean=sum(ms) / len(ms),
            min=min(ms),
            max=max(ms),
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and test output."""
        return (
            f"n={self.n} p50={self.p50:.1f} ms p95={self.p95:.1f} ms p99={self.p99:.1f} ms "
            f"mean={self.mean:.1f} ms max={self.max:.1f} ms"
        )
