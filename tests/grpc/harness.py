"""In-process gRPC server harness: create_grpc_server over a real Engine, event loop in a thread.

The loop runs in a background thread so that tests can use the ordinary synchronous grpc stubs.
Nothing here imports tritonclient: its `inference.*` protobuf symbols would clash with ours in one
process (tests that use it run it in a subprocess, see test_grpc_tritonclient.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from server.engine import Engine
from server.grpc.server import create_grpc_server, stop_grpc_server
from server.settings import Settings

T = TypeVar("T")
MODEL_NAME = "tiny"


def settings_for(model: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "models": [model],
        "providers": ["CPUExecutionProvider"],
        "host": "127.0.0.1",
        "grpc_port": 0,
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "warmup_sizes": ["preferred"],
        "log_format": "text",
        "shutdown_grace_s": 2.0,
        # references are computed at the upload's size; tests of the preferred-size policy turn it on
        "infer_at_preferred_size": False,
    }
    base.update(overrides)
    return Settings(**base)


class ServerThread:
    """create_grpc_server + Engine on an event loop in a daemon thread."""

    def __init__(self, settings: Settings, *, start_engine: bool = True) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-test-loop", daemon=True)
        self._thread.start()
        self.engine = Engine(settings)
        self.server, self.port = self.call(self._create)
        self.call(self.server.start)
        if start_engine:
            self.start_engine()

    def start_engine(self) -> None:
        """Load + warm up, then wait for health to report it (it follows the engine within ~0.1 s)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.call(self.engine.start)
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            while (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                != health_pb2.HealthCheckResponse.SERVING
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("health did not turn SERVING after the engine started")
                time.sleep(0.01)

    async def _create(self) -> tuple[grpc.aio.Server, int]:
        return create_grpc_server(self.settings, self.engine)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def submit(self, make: Callable[[], Awaitable[T]]) -> Future[T]:
        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        return self.submit(make).result(timeout)

    def channel(self, **kwargs: Any) -> grpc.Channel:
        return grpc.insecure_channel(self.target, **kwargs)

    def stop(self) -> None:
        try:
            self.call(lambda: stop_grpc_server(self.server, 1.0))
            self.call(self.engine.close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def solid(colour: tuple[int, int, int], height: int = 16, width: int = 24) -> np.ndarray:
    """An RGB image of one colour."""
    return np.broadcast_to(np.asarray(colour, dtype=np.uint8), (height, width, 3)).copy()


def random_image(seed: int, height: int = 20, width: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


class OnnxReference:
    """Direct onnxruntime runs of the served file: what the server's answers must equal."""

    def __init__(self, model: Path) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a uint8 [N, H, W, 3] batch."""
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, {"image": images}), strict=True))

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Labels of one [H, W, 3] image."""
        return self.run(image[None])["labels"][0]
