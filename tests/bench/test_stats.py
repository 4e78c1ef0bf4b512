from __future__ import annotations

import numpy as np
import pytest

from bench.stats import LatencyStats, percentile


@pytest.mark.parametrize("q", [0, 1, 50, 95, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = list(np.random.default_rng(1).exponential(10.0, 137))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_stats_in_milliseconds() -> None:
    stats = LatencyStats.from_seconds([0.010, 0.020, 0.030, 0.040])
    assert stats.n == 4
    assert stats.p50 == pytest.approx(25.0)
    assert stats.min == pytest.approx(10.0)
    assert stats.max == pytest.approx(40.0)
    assert stats.mean == pytest.approx(25.0)
    assert set(stats.to_dict()) == {"n", "p50", "p95", "p99", "mean", "min", "max"}
