"""The bounded queue and dynamic batcher (thread-level, deterministic via events)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from server.batching import Batcher, BatchStats, CancelToken
from server.errors import NotReady, Overloaded


class GatedRun:
    """run_fn whose first call blocks until released, so later requests pile up in the queue."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
        self.first = True

    def __call__(
        self, images: np.ndarray, outputs: tuple[str, ...], token: CancelToken | None = None
    ) -> dict[str, np.ndarray]:
        self.batches.append((images.shape, outputs))
        if self.first:
            self.first = False
            self.started.set()
            self.gate.wait(10)
        # a per-image answer that proves results are split back in order
        return {name: images[:, 0, 0, 0].astype(np.int64) * 10 + len(name) for name in outputs}


def image(value: int, size: int = 8, n: int = 1) -> np.ndarray:
    return np.full((n, size, size, 3), value, dtype=np.uint8)


def wait_depth(batcher: Batcher, depth: int) -> None:
    deadline = time.monotonic() + 5
    while batcher.depth != depth and time.monotonic() < deadline:
        time.sleep(0.001)
    assert batcher.depth == depth


def test_same_shape_requests_are_batched_and_split_in_order() -> None:
    run = GatedRun()
    stats: list[BatchStats] = []
    batcher = Batcher(run, name="m", max_batch=4, max_delay_s=0.05, max_queue=16, on_batch=stats.append)
    try:
        blocker = batcher.submit(image(1), ("labels",))
        assert run.started.wait(5)
        futures = [batcher.submit(image(v), ("labels",)) for v in (2, 3, 4)]
        run.gate.set()
        assert blocker.result(5)["labels"].tolist() == [16]
        assert [f.result(5)["labels"].tolist() for f in futures] == [[26], [36], [46]]
        assert [shape[0] for shape, _ in run.batches] == [1, 3]
        assert stats[-1].batch_size == 3 and stats[-1].requests == 3
    finally:
        batcher.close()


def test_different_shapes_and_outputs_are_not_mixed() -> None:
    run = GatedRun()
    batcher = Batcher(run, name="m", max_batch=8, max_delay_s=0.01, max_queue=16)
    try:
        blocker = batcher.submit(image(1), ("labels",))
        assert run.started.wait(5)
        a = batcher.submit(image(2, size=8), ("labels",))
        b = batcher.submit(image(3, size=16), ("labels",))
        c = batcher.submit(image(4, size=8), ("labels", "confidence"))
        d = batcher.submit(image(5, size=8), ("labels",))
        run.gate.set()
        for f in (blocker, a, b, c, d):
            f.result(5)
        groups = sorted((shape, outputs) for shape, outputs in run.batches[1:])
        assert groups == sorted(
            [
                ((2, 8, 8, 3), ("labels",)),
                ((1, 16, 16, 3), ("labels",)),
                ((1, 8, 8, 3), ("labels", "confidence")),
            ]
        )
        assert c.result()["confidence"].tolist() == [50]
    finally:
        batcher.close()


def test_batches_never_exceed_max_batch_images() -> None:
    run = GatedRun()
    batcher = Batcher(run, name="m", max_batch=4, max_delay_s=0.01, max_queue=16)
    try:
        batcher.submit(image(1), ("labels",))
        assert run.started.wait(5)
        futures = [batcher.submit(image(v, n=n), ("labels",)) for v, n in ((2, 3), (3, 2), (4, 1), (5, 5))]
        run.gate.set()
        results = [f.result(5)["labels"] for f in futures]
        assert [len(r) for r in results] == [3, 2, 1, 5]
        # 3 + 1 fill a batch of 4 (the 2 does not fit and waits), then 2; the oversize 5 runs alone
        assert [shape[0] for shape, _ in run.batches[1:]] == [4, 2, 5]
    finally:
        batcher.close()


def test_full_queue_raises_overloaded_immediately() -> None:
    run = GatedRun()
    batcher = Batcher(run, name="m", max_queue=2, retry_after_s=4)
    try:
        batcher.submit(image(1), ("labels",))
        assert run.started.wait(5)
        queued = [batcher.submit(image(v), ("labels",)) for v in (2, 3)]
        started = time.monotonic()
        with pytest.raises(Overloaded):
            batcher.check_capacity()  # the pre-decode check refuses too, without queueing anything
        assert batcher.depth == 2
        with pytest.raises(Overloaded) as info:
            batcher.submit(image(4), ("labels",))
        assert time.monotonic() - started < 1.0
        assert info.value.retry_after_s == 4
        assert batcher.depth == 2 and batcher.in_flight == 3
        run.gate.set()
        assert [f.result(5)["labels"].tolist() for f in queued] == [[26], [36]]
    finally:
        batcher.close()


def test_held_places_count_against_the_queue_and_their_submit_is_not_refused() -> None:
    run = GatedRun()
    batcher = Batcher(run, name="m", max_queue=2)
    try:
        batcher.submit(image(1), ("labels",))
        assert run.started.wait(5)
        first, second = batcher.hold(), batcher.hold()  # two requests decoding: the queue is full
        with pytest.raises(Overloaded, match="2 requests queued"):
            batcher.hold()
        with pytest.raises(Overloaded):
            batcher.check_capacity()
        with pytest.raises(Overloaded):
            batcher.submit(image(9), ("labels",))  # a request that holds no place
        taken = batcher.submit(image(2), ("labels",), slot=first)  # a held place is never refused
        assert batcher.depth == 1 and not first.held
        second.release()
        second.release()  # idempotent: the place is given back once
        third = batcher.hold()  # the one given back
        with pytest.raises(Overloaded):
            batcher.hold()
        third.release()
        first.release()  # already taken by its submit: gives back nothing
        fourth = batcher.hold()
        with pytest.raises(Overloaded):
            batcher.hold()
        fourth.release()
        run.gate.set()
        assert taken.result(5)["labels"].tolist() == [26]
    finally:
        batcher.close()


def test_a_place_of_another_batcher_is_not_taken() -> None:
    run, other = GatedRun(), Batcher(GatedRun(), name="other", max_queue=1)
    batcher = Batcher(run, name="m", max_queue=1)
    try:
        batcher.submit(image(1), ("labels",))
        assert run.started.wait(5)
        batcher.submit(image(2), ("labels",))
        with other.hold() as slot:
            with pytest.raises(Overloaded):
                batcher.submit(image(3), ("labels",), slot=slot)
            assert slot.held
        assert not slot.held
        run.gate.set()
    finally:
        batcher.close()
        other.close()


def test_errors_reach_every_caller_and_workers_survive() -> None:
    calls = {"n": 0}

    def run(images: np.ndarray, outputs: tuple[str, ...], token: CancelToken) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return {"labels": images[:, 0, 0, 0]}

    batcher = Batcher(run, name="m")
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(image(1), ("labels",)).result(5)
        assert batcher.submit(image(7), ("labels",)).result(5)["labels"].tolist() == [7]
    finally:
        batcher.close()


def test_cancelled_requests_are_skipped() -> None:
    run = GatedRun()
    batcher = Batcher(run, name="m", max_queue=4)
    try:
        batcher.submit(image(1), ("labels",))
        assert run.started.wait(5)
        cancelled = batcher.submit(image(2), ("labels",))
        kept = batcher.submit(image(3, size=16), ("labels",))
        assert cancelled.cancel()
        run.gate.set()
        assert kept.result(5)["labels"].tolist() == [36]
        assert all(shape[1] != 8 or shape[0] == 1 for shape, _ in run.batches)
        assert len(run.batches) == 2  # the cancelled one never ran
    finally:
        batcher.close()


def test_close_drains_queue_then_refuses() -> None:
    run = GatedRun()
    batcher = Batcher(run, name="m", max_queue=4)
    first = batcher.submit(image(1), ("labels",))
    assert run.started.wait(5)
    second = batcher.submit(image(2), ("labels",))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            batcher.submit(image(3), ("labels",)).cancel()
        except NotReady:
            break
        time.sleep(0.001)
    else:
        pytest.fail("submit kept being accepted after close()")
    run.gate.set()
    closer.join(5)
    assert first.result(0)["labels"].tolist() == [16] and second.result(0)["labels"].tolist() == [26]
    wait_depth(batcher, 0)
