"""Bidirectional streams that answer in request order while several requests are in flight.

Frames of a video stream are independent, so up to ``window`` of them run concurrently (the engine's
batcher can merge them); replies are still written strictly in the order the requests arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

Req = TypeVar("Req")
Rep = TypeVar("Rep")


async def ordered_replies(
    requests: AsyncIterable[Req], handle: Callable[[Req], Awaitable[Rep]], *, window: int
) -> AsyncIterator[Rep]:
    """Yield ``await handle(r)`` for every request, in request order, with at most ``window`` in flight.

    ``handle`` should turn per-request failures into replies; an exception it raises ends the stream.
    """
    in_flight: asyncio.Queue[asyncio.Task[Rep] | None] = asyncio.Queue(maxsize=max(1, window))

    async def read() -> None:
        try:
            async for request in requests:
                # put() waits while the window is full: backpressure on the client through gRPC flow control.
                await in_flight.put(asyncio.ensure_future(handle(request)))
        except Exception:
            await in_flight.put(None)  # wake the writer; it re-raises this through `await reader`
            raise
        await in_flight.put(None)

    reader = asyncio.create_task(read())
    try:
        while (task := await in_flight.get()) is not None:
            yield await task
        await reader  # re-raise a failure while reading requests
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        while not in_flight.empty():
            leftover = in_flight.get_nowait()
            if leftover is not None:
                leftover.cancel()
