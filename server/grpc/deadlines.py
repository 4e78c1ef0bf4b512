"""Honour the client's gRPC deadline in the server's own work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from server.errors import DeadlineExceeded

T = TypeVar("T")


async def within_deadline(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (queue slot included) once the caller's deadline has passed.

    Without a client deadline the engine's own request timeout applies.
    """
    remaining = context.time_remaining()
    if remaining is None:
        return await work
    if remaining <= 0:
        if isinstance(work, asyncio.Future | asyncio.Task):
            work.cancel()
        elif hasattr(work, "close"):
            work.close()  # a coroutine that will never run
        raise DeadlineExceeded("the request's deadline passed before it could be processed")
    try:
        return await asyncio.wait_for(work, timeout=remaining)
    except TimeoutError:
        raise DeadlineExceeded(
            f"the request's deadline ({remaining:.3f} s left on arrival) was exceeded"
        ) from None
