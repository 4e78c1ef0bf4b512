"""server.codec_pool: at most ``threads`` codec calls at once, context carried, errors returned."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from server.codec_pool import CodecPool

REQUEST = contextvars.ContextVar("request", default="-")


def _running_peak(pool: CodecPool, calls: int) -> tuple[int, set[str]]:
    running, peak, names = 0, 0, set()
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            names.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(pool.run(work) for _ in range(calls)))

    asyncio.run(main())
    return peak, names


@pytest.mark.parametrize("threads", [1, 2])
def test_no_more_than_threads_calls_run_at_once(threads: int) -> None:
    pool = CodecPool(threads)
    try:
        peak, names = _running_peak(pool, 6)
    finally:
        pool.close()
    assert peak == threads
    assert len(names) == threads and all(n.startswith("danet-codec") for n in names)


def test_zero_threads_is_asyncios_default_pool() -> None:
    peak, names = _running_peak(CodecPool(0), 4)
    assert peak > 1
    assert not any(n.startswith("danet-codec") for n in names)


def test_context_arguments_and_errors_travel() -> None:
    pool = CodecPool(1)

    def read(prefix: str, *, suffix: str) -> str:
        return prefix + REQUEST.get() + suffix

    async def main() -> str:
        REQUEST.set("req-7")
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 // 0)
        return await pool.run(read, "<", suffix=">")

    try:
        assert asyncio.run(main()) == "<req-7>"
    finally:
        pool.close()
    with pytest.raises(ValueError, match="codec threads"):
        CodecPool(-1)
