"""The interleaved schedule: every path gets the same rounds, in rotating order; a failing path drops out."""

from __future__ import annotations

from typing import Any

from bench.runner import Plan, _Collector, _schedule


class FakePath:
    def __init__(self, key: str, log: list[str], fail_on_call: int | None = None) -> None:
        self.key = key
        self.precision = "fp32"
        self.provider = "fake"
        self.calls = 0
        self.log = log
        self.fail_on_call = fail_on_call

    def call(self) -> float:
        self.calls += 1
        self.log.append(self.key)
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError(f"{self.key} broke")
        return 0.01 * self.calls

    def burst(self, concurrency: int) -> tuple[int, float]:
        self.log.append(f"{self.key}x{concurrency}")
        return concurrency, 0.5


def _plan(**overrides: Any) -> Plan:
    fields: dict[str, Any] = dict(
        providers=["CPUExecutionProvider"],
        threads=1,
        sizes=[(8, 8)],
        precisions=["fp32"],
        iterations=3,
        warmup=1,
        concurrency=[1, 4],
        concurrency_sizes=None,
        rounds=2,
        device="cpu",
        http_format="color",
        http_upload="multipart",
    )
    fields.update(overrides)
    return Plan(**fields)


def test_rounds_rotate_through_all_paths() -> None:
    log: list[str] = []
    paths = [FakePath(k, log) for k in ("a", "b", "c")]
    collected = _Collector()
    _schedule(paths, _plan(), (8, 8), collected, "test")  # type: ignore[arg-type]
    # warm-up a b c, then 3 timed rounds rotating the start, then 2 burst rounds rotating too
    assert log == [
        "a",
        "b",
        "c",
        "a",
        "b",
        "c",
        "b",
        "c",
        "a",
        "c",
        "a",
        "b",
        "ax4",
        "bx4",
        "cx4",
        "bx4",
        "cx4",
        "ax4",
    ]
    assert {k: len(v) for k, v in collected.durations.items()} == {"a": 3, "b": 3, "c": 3}
    assert collected.bursts["a"] == {4: [(4, 0.5), (4, 0.5)]}
    assert not collected.errors


def test_peaks_are_read_between_one_at_a_time_calls_and_bursts() -> None:
    log: list[str] = []
    paths = [FakePath(k, log) for k in ("a", "b")]
    _schedule(paths, _plan(), (8, 8), _Collector(), "test", after_sequential=lambda live: log.append("PEAKS"))  # type: ignore[arg-type]
    assert log.index("PEAKS") == 2 + 2 * 3  # after warm-up and timed calls, before the first burst
    assert log[log.index("PEAKS") + 1] == "ax4"


def test_a_failing_path_is_dropped_and_reported() -> None:
    log: list[str] = []
    paths = [FakePath("a", log), FakePath("b", log, fail_on_call=3), FakePath("c", log)]
    collected = _Collector()
    _schedule(paths, _plan(), (8, 8), collected, "test")  # type: ignore[arg-type]
    assert "b broke" in collected.errors["b"]
    assert len(collected.durations["a"]) == 3 and len(collected.durations["c"]) == 3
    assert "bx4" not in log


def test_concurrency_only_at_chosen_sizes() -> None:
    plan = _plan(concurrency=[1, 4, 16], concurrency_sizes=[(512, 512)])
    assert plan.levels((512, 512)) == [4, 16]
    assert plan.levels((1024, 2048)) == []
