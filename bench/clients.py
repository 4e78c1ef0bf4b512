"""End-to-end clients (HTTP ``POST /segment``, gRPC ``Segment``) and a closed-loop load driver.

Every call returns an :class:`Outcome` instead of raising, so that a load run can count what came
back: successes, deliberate rejections (503 / RESOURCE_EXHAUSTED) and anything else. The driver keeps
``concurrency`` calls in flight until ``total`` have finished (a closed loop, what a pool of users does).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any, Protocol, Self

import httpx
import numpy as np

from bench.stats import LatencyStats

#: Statuses that a server under too much load is expected to answer with.
REJECTIONS = frozenset({"503", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class Outcome:
    """One finished call: ``status`` is the HTTP status code or the gRPC status name, or ``error:<Type>``."""

    ok: bool
    status: str
    latency_s: float
    body_bytes: int = 0
    detail: str = ""


@dataclass
class LoadResult:
    concurrency: int
    wall_s: float
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def ok_count(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in REJECTIONS]

    @property
    def failures(self) -> list[Outcome]:
        """Neither a success nor a deliberate rejection."""
        return [o for o in self.outcomes if not o.ok and o.status not in REJECTIONS]

    @property
    def throughput_rps(self) -> float:
        return self.ok_count / self.wall_s if self.wall_s > 0 else 0.0

    def latency(self) -> LatencyStats | None:
        durations = [o.latency_s for o in self.outcomes if o.ok]
        return LatencyStats.from_seconds(durations) if durations else None

    def describe(self) -> str:
        stats = self.latency()
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        lat = stats.describe() if stats else "no successes"
        return f"c={self.concurrency} {len(self.outcomes)} calls in {self.wall_s:.1f} s ({self.throughput_rps:.1f}/s) [{counts}] {lat}"


Call = Callable[[], Awaitable[Outcome]]


class Segmenter(Protocol):
    """What a measured server path needs from its client: open/close, one checked call, timed calls."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def check(self, size: tuple[int, int]) -> str: ...

    async def __call__(self) -> Outcome: ...


async def run_closed_loop(call: Call, *, concurrency: int, total: int) -> LoadResult:
    """Keep ``concurrency`` calls in flight until ``total`` have finished."""
    if concurrency < 1 or total < 1:
        raise ValueError(f"concurrency and total must be >= 1, got {concurrency}, {total}")
    started = 0
    outcomes: list[Outcome] = []

    async def worker() -> None:
        nonlocal started
        while started < total:
            started += 1
            outcomes.append(await call())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    return LoadResult(concurrency=concurrency, wall_s=time.perf_counter() - t0, outcomes=outcomes)


# --- HTTP ---------------------------------------------------------------------------------------------


class HttpSegmenter:
    """``POST /segment`` with a pre-encoded image; use as an async context manager, then call it."""

    def __init__(
        self,
        base_url: str,
        image: bytes,
        *,
        content_type: str = "image/png",
        params: Mapping[str, str] | None = None,
        upload: str = "multipart",
        path: str = "/segment",
        max_connections: int = 64,
        timeout_s: float = 600.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if upload not in ("multipart", "raw"):
            raise ValueError(f"upload must be 'multipart' or 'raw', got {upload!r}")
        self.image = image
        self.content_type = content_type
        self.params = dict(params or {})
        self.upload = upload
        self.path = path
        self.headers = dict(headers or {})
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits)

    async def __aenter__(self) -> HttpSegmenter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.aclose()

    async def request(self) -> httpx.Response:
        """One request; raises httpx errors (for callers that want the body)."""
        if self.upload == "raw":
            return await self.client.post(
                self.path,
                content=self.image,
                params=self.params,
                headers={**self.headers, "content-type": self.content_type},
            )
        files = {"image": ("image", self.image, self.content_type)}
        return await self.client.post(self.path, files=files, params=self.params, headers=self.headers)

    async def check(self, size: tuple[int, int]) -> str:
        """One request whose answer is checked (status, map size); returns the provider that ran it."""
        from bench.images import decode

        response = await self.request()
        if response.status_code != 200:
            raise RuntimeError(f"POST {self.path} answered {response.status_code}: {response.text[:300]}")
        shape = decode(response.content).shape[:2]
        if shape != size:
            raise RuntimeError(f"POST {self.path} returned a {shape} map for a {size} image")
        return response.headers.get("x-danet-provider", "")

    async def __call__(self) -> Outcome:
        t0 = time.perf_counter()
        try:
            response = await self.request()
        except httpx.HTTPError as exc:
            return Outcome(False, f"error:{type(exc).__name__}", time.perf_counter() - t0, detail=str(exc))
        elapsed = time.perf_counter() - t0
        detail = "" if response.status_code == 200 else response.text[:300]
        return Outcome(
            response.status_code == 200, str(response.status_code), elapsed, len(response.content), detail
        )


# --- gRPC ---------------------------------------------------------------------------------------------

SEGMENTATION_PB2 = "protos.gen.danet.segmentation.v1.segmentation_pb2"
SEGMENTATION_PB2_GRPC = "protos.gen.danet.segmentation.v1.segmentation_pb2_grpc"


def segmentation_stubs() -> tuple[ModuleType, ModuleType]:
    """The generated ``danet.segmentation.v1`` modules (``segmentation_pb2``, ``segmentation_pb2_grpc``)."""
    return importlib.import_module(SEGMENTATION_PB2), importlib.import_module(SEGMENTATION_PB2_GRPC)


def grpc_channel_options(max_message_bytes: int = 256 * 1024 * 1024) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class _AioGrpcCall:
    """One unary RPC over a ``grpc.aio`` channel, timed per call: the channel lifecycle and ``__call__``
    shared by the gRPC segmenters. A subclass sets ``request_message`` and implements ``_stub`` and
    ``request``."""

    request_message: Any

    def __init__(self, target: str, timeout_s: float) -> None:
        import grpc

        self._grpc = grpc
        self.target = target
        self.timeout_s = timeout_s
        self.channel: Any = None
        self.stub: Any = None

    def _stub(self, channel: Any) -> Any:
        raise NotImplementedError

    async def request(self) -> Any:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        # grpc.aio channels belong to the running event loop: create it here, not in __init__.
        self.channel = self._grpc.aio.insecure_channel(self.target, options=grpc_channel_options())
        self.stub = self._stub(self.channel)
        await self.channel.channel_ready()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.channel.close()

    async def __call__(self) -> Outcome:
        t0 = time.perf_counter()
        try:
            reply = await self.request()
        except self._grpc.aio.AioRpcError as exc:
            return Outcome(False, exc.code().name, time.perf_counter() - t0, detail=exc.details() or "")
        return Outcome(True, "OK", time.perf_counter() - t0, reply.ByteSize())


class GrpcSegmenter(_AioGrpcCall):
    """gRPC ``SegmentationService.Segment`` (async context manager, then call).

    ``image`` is an encoded file (bytes) or, for the raw-pixel path, a uint8 ``[H, W, 3]`` array sent as
    ``RawImage``. ``output`` names an ``OutputKind`` (``"COLOR"`` by default, the same PNG that REST
    returns); ``raw_labels`` asks for the class map as raw uint8 instead of a PNG.
    """

    def __init__(
        self,
        target: str,
        image: bytes | np.ndarray,
        *,
        output: str = "COLOR",
        raw_labels: bool = False,
        model: str = "",
        timeout_s: float = 600.0,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(target, timeout_s)
        pb2, self._pb2_grpc = segmentation_stubs()
        kind = pb2.OutputKind.Value(f"OUTPUT_KIND_{output.upper()}")
        encoding = pb2.LABEL_ENCODING_RAW if raw_labels else pb2.LABEL_ENCODING_PNG
        options = pb2.SegmentOptions(model=model, outputs=[kind], label_encoding=encoding)
        if isinstance(image, np.ndarray):
            height, width = image.shape[:2]
            raw = pb2.RawImage(height=height, width=width, pixels=np.ascontiguousarray(image).tobytes())
            self.request_message = pb2.SegmentRequest(raw=raw, options=options)
        else:
            self.request_message = pb2.SegmentRequest(encoded=image, options=options)
        self.metadata = metadata

    def _stub(self, channel: Any) -> Any:
        return self._pb2_grpc.SegmentationServiceStub(channel)

    async def request(self) -> Any:
        return await self.stub.Segment(
            self.request_message, timeout=self.timeout_s, metadata=self.metadata or None
        )

    async def check(self, size: tuple[int, int]) -> str:
        reply = await self.request()
        if (reply.height, reply.width) != size:
            raise RuntimeError(f"Segment returned {reply.height}x{reply.width} for a {size} image")
        return str(reply.provider)


# --- KServe v2 over gRPC ------------------------------------------------------------------------------


class KServeGrpcInfer(_AioGrpcCall):
    """``inference.GRPCInferenceService/ModelInfer`` with the image as ``raw_input_contents`` (what
    ``tritonclient.grpc`` sends), asking for ``outputs`` only (default: ``labels``)."""

    def __init__(
        self,
        target: str,
        image: np.ndarray,
        *,
        model: str,
        outputs: tuple[str, ...] = ("labels",),
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__(target, timeout_s)
        from protos.gen.inference import grpc_service_pb2 as pb
        from protos.gen.inference import grpc_service_pb2_grpc as pb_grpc

        self._pb_grpc = pb_grpc
        batch = np.ascontiguousarray(image, dtype=np.uint8)[np.newaxis]
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="image", datatype="UINT8", shape=list(batch.shape)
        )
        self.request_message = pb.ModelInferRequest(
            model_name=model,
            inputs=[tensor],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
            raw_input_contents=[batch.tobytes()],
        )

    def _stub(self, channel: Any) -> Any:
        return self._pb_grpc.GRPCInferenceServiceStub(channel)

    async def request(self) -> Any:
        return await self.stub.ModelInfer(self.request_message, timeout=self.timeout_s)

    async def check(self, size: tuple[int, int]) -> str:
        reply = await self.request()
        shape = tuple(reply.outputs[0].shape) if reply.outputs else ()
        if shape[1:3] != size:
            raise RuntimeError(f"ModelInfer returned an output of shape {list(shape)} for a {size} image")
        return ""
