"""``grpc.health.v1.Health`` that follows the engine.

NOT_SERVING until the models are warm, SERVING while ``engine.ready``, and NOT_SERVING for good once
shutdown begins; at that point open ``Watch`` streams receive NOT_SERVING and then end, so that a
watcher does not hold the server's shutdown grace period open. The whole server (``""``) and each of
our services share one status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class EngineHealthServicer(health_pb2_grpc.HealthServicer):
    """Check / Watch / List over one shared status, changed by ``publish``."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._services = ("", *service_names)
        self._status: Any = NOT_SERVING
        self._final = False
        self._changed = asyncio.Event()  # replaced on every change; waiters hold the old one

    @property
    def status(self) -> Any:
        return self._status

    def publish(self, status: Any, *, final: bool = False) -> None:
        """Set the status (ignored after a final one) and wake every watcher."""
        if self._final:
            return
        self._status, self._final = status, final
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _response(self, service: str) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(
            status=self._status if service in self._services else SERVICE_UNKNOWN
        )

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._services:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return self._response(request.service)

    async def Watch(  # type: ignore[override]
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            changed = self._changed  # taken before reading the status: no change can slip in between
            reply = self._response(request.service)
            if reply.status != last:
                yield reply
                last = reply.status
            if self._final:
                return
            await changed.wait()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={name: self._response(name) for name in self._services})


class ReadinessHealth:
    """The health servicer plus the task that mirrors ``engine.ready`` into it."""

    def __init__(self, engine: Any, service_names: Iterable[str]) -> None:
        self.servicer = EngineHealthServicer(service_names)
        self._engine = engine
        self._task: asyncio.Task[None] | None = None

    async def _follow(self) -> None:
        while True:
            status = SERVING if self._engine.ready else NOT_SERVING
            if status != self.servicer.status:
                self.servicer.publish(status)
                logger.info("gRPC health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            await asyncio.sleep(POLL_INTERVAL_S)

    def start(self) -> None:
        """Follow the engine from now on (needs the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="grpc-health-follow-engine")

    async def shutdown(self) -> None:
        """NOT_SERVING for good; watchers are told and their streams end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.servicer.publish(NOT_SERVING, final=True)
        logger.info("gRPC health: NOT_SERVING (shutting down)")
