"""Stop a request's work when its client goes away.

ASGI servers do not cancel a handler whose client has disconnected: it would run to the end and hold the
engine for nobody. Once the request body has arrived, this middleware listens for ``http.disconnect`` and,
if it comes before the response, cancels the handler. The cancellation reaches ``Engine.run``, which takes
the request out of its model's queue or stops its onnxruntime run; a multi-pass request stops between
passes (``server.segmentation.tta.bounded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = asyncio.Event()
        disconnected = asyncio.Event()
        responded = False

        async def app_receive() -> Message:
            if body_done.is_set():  # asked again after the body: only a disconnect can come
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_done.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        async def watch() -> None:
            await body_done.wait()
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()

        handler = asyncio.ensure_future(self.app(scope, app_receive, app_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done() and disconnected.is_set() and not responded:
                logger.info(
                    "client went away before the answer to %s %s: its work is stopped",
                    scope.get("method"),
                    scope.get("path"),
                )
                handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
        finally:
            watcher.cancel()
            if not handler.done():
                handler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
