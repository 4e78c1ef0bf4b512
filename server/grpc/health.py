"""``grpc.health.v1`` status that follows the engine: NOT_SERVING until the models are warm, SERVING
while ``engine.ready``, NOT_SERVING for good once shutdown begins."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from grpc_health.v1 import health, health_pb2

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1


class ReadinessHealth:
    """Owns the health servicer and a task that mirrors ``engine.ready`` into it.

    ``""`` (the whole server) and every listed service name get the same status.
    """

    def __init__(self, engine: Any, service_names: Iterable[str]) -> None:
        self.servicer = health.aio.HealthServicer()
        self._engine = engine
        self._services = ["", *service_names]
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def _publish(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            await self.servicer.set(name, status)
        if serving != self._serving:
            logger.info("gRPC health: %s", "SERVING" if serving else "NOT_SERVING")
        self._serving = serving

    async def _follow(self) -> None:
        while True:
            serving = bool(self._engine.ready)
            if serving != self._serving:
                await self._publish(serving)
            await asyncio.sleep(POLL_INTERVAL_S)

    def start(self) -> None:
        """Publish NOT_SERVING now (unless already ready) and follow the engine from then on."""
        # Set synchronously so that a Check racing the first poll never sees the servicer's default SERVING.
        for name in self._services:
            self.servicer._server_status[name] = health_pb2.HealthCheckResponse.NOT_SERVING
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="grpc-health-follow-engine")

    async def shutdown(self) -> None:
        """NOT_SERVING permanently (watchers are told), and stop following the engine."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.servicer.enter_graceful_shutdown()
