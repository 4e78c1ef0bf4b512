"""danet-serve as a Ray Serve application: ``serve run deploy/ray/serve.yaml`` (optional extra ``[ray]``).

Each replica is one Ray actor that does exactly what ``danet-serve`` does, ``settings = Settings(...)`` ->
``engine = Engine(settings)`` -> ``await engine.start()`` -> ``create_app(settings, engine)``, and the Serve
proxy forwards HTTP to that FastAPI app unchanged (every route, error and header is the same code path).
The only addition is ``replica_id``, which makes the app answer with an ``X-Danet-Replica`` header.
gRPC goes through Serve's gRPC proxy to the same servicers as danet-serve's gRPC port (server/ray_grpc.py).

Overload stays a clean 503 + Retry-After: a replica accepts at most ``max_queue`` requests at once (Serve's
``max_ongoing_requests``), each proxy queues at most ``max_queue`` more when every replica is full
(``max_queued_requests``) and rejects the rest with 503 and ``Retry-After: retry_after_s``; anything that
still reaches a full engine queue gets the engine's own 503 + Retry-After.

Only Ray imports this module (``import_path: server.ray_app:build_app``); the normal serving path does not.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from server.engine import Engine
from server.grpc.kserve import KServeServicer
from server.grpc.segmentation import SegmentationServicer
from server.http.app import create_app
from server.ray_grpc import GrpcForwarding, register_message_modules
from server.settings import Settings

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "danet"
REPLICA_HEADER = "X-Danet-Replica"


def replica_name() -> str:
    """``<replica unique id>@<node id prefix>``: which replica answered, and on which Ray node."""
    context = serve.get_replica_context()
    node = ray.get_runtime_context().get_node_id()
    return f"{context.replica_id.unique_id}@{node[:12]}"


class DanetReplica(GrpcForwarding):
    """One replica = one Engine (one onnxruntime session per model on this actor's CPU or GPU), served over
    HTTP by the FastAPI app and over gRPC (Serve's gRPC proxy) by the gRPC servicers (server/ray_grpc.py)."""

    async def __init__(self, overrides: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        # DANET_* variables of the replica's runtime_env apply here too, as for danet-serve.
        self.settings = Settings(**{**overrides, "replica_id": replica_name()})
        self.engine = Engine(self.settings)
        await self.engine.start()  # load + warm up: Serve routes to a replica only once this returns
        register_message_modules()  # gRPC messages travel pickled between the proxy and this replica
        self._segmentation = SegmentationServicer(self.settings, self.engine)
        self._kserve = KServeServicer(self.settings, self.engine)
        key = self.settings.api_key_value()
        self._api_key = key.encode("utf-8") if key is not None else None
        logger.info("replica %s ready", self.settings.replica_id)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.settings, self.engine)

    def check_health(self) -> None:
        """Serve restarts a replica whose engine stopped being ready."""
        if not self.engine.ready:
            raise RuntimeError(f"engine of replica {self.settings.replica_id} is not ready")

    async def __del__(self) -> None:
        await self.engine.close()


# The FastAPI app is built per replica, after __init__, by __serve_build_asgi_app__ (serve.ingress() with no
# app): one app over one engine, exactly as in danet-serve.
DanetDeployment = serve.deployment(
    name=DEPLOYMENT_NAME, health_check_period_s=5, graceful_shutdown_timeout_s=30
)(serve.ingress()(DanetReplica))


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Serve's per-replica limits from the engine's queue bound (see the module docstring)."""
    return {
        "max_ongoing_requests": settings.max_queue,
        "max_queued_requests": settings.max_queue,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=settings.retry_after_s),
    }


def application(args: dict[str, Any], **serve_options: Any) -> Application:
    """The Serve application for ``args`` (``Settings`` fields by name; ``DANET_*`` variables fill in the
    rest), validated here so that a typo fails at once instead of in every replica. ``serve_options`` are
    further deployment options (``num_replicas``, ``ray_actor_options``, ...), as a Serve config sets them."""
    overrides = dict(args or {})
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"unknown danet-serve settings in the Serve config args: {unknown}")
    settings = Settings(**overrides)
    return DanetDeployment.options(**deployment_options(settings), **serve_options).bind(overrides)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``import_path: server.ray_app:build_app``; ``args`` is the config's ``args:``
    mapping, e.g. ``{"models": ["/models/city.onnx"], "max_queue": 16}``."""
    return application(args)
