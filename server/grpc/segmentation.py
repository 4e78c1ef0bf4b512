"""``danet.segmentation.v1.SegmentationService``: translate protos <-> engine calls, nothing more."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import unknown_fields
from google.protobuf.message import Message

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from server import imaging
from server.engine import Engine, ModelInfo, SegmentResult
from server.errors import DanetError, InvalidImage, InvalidOption, NotReady, PayloadTooLarge
from server.grpc.deadlines import within_deadline
from server.grpc.errors import status_for, translate_errors, translate_stream_errors
from server.grpc.streaming import ordered_replies
from server.settings import Settings
from server.tta import SegmentOptions

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SegmentationService"].full_name
DEFAULT_ALPHA = 0.5
DEFAULT_OUTPUTS = (pb.OUTPUT_KIND_INDEX, pb.OUTPUT_KIND_STATS)
_MODES = {pb.MODE_UNSPECIFIED: "whole", pb.MODE_WHOLE: "whole", pb.MODE_SLIDE: "slide"}
_KNOWN_OUTPUTS = frozenset(pb.OutputKind.values()) - {pb.OUTPUT_KIND_UNSPECIFIED}
_LABEL_ENCODINGS = frozenset(pb.LabelEncoding.values())
_PRESETS = {
    pb.TEST_TIME_AUGMENTATION_UNSPECIFIED: None,
    pb.TEST_TIME_AUGMENTATION_OFFICIAL: "official",
    pb.TEST_TIME_AUGMENTATION_MMSEG: "mmseg",
}


def _little_endian(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def reject_unknown_fields(message: Message) -> None:
    """A field number this server's schema lacks (a newer client's option) is an error, not ignored."""
    fields: Any = unknown_fields.UnknownFieldSet(message)  # iterable; the stubs say otherwise
    numbers = sorted({field.field_number for field in fields})
    if numbers:
        known = ", ".join(f"{f.name} = {f.number}" for f in message.DESCRIPTOR.fields)
        raise InvalidOption(
            f"unknown field number(s) {numbers} in {message.DESCRIPTOR.name}; this server's "
            f"{message.DESCRIPTOR.full_name} has: {known}"
        )


def _size_option(values: Any, name: str) -> int | tuple[int, int] | None:
    sizes = [int(v) for v in values]
    if len(sizes) > 2:
        raise InvalidOption(f"{name} takes one or two values, got {sizes}")
    if not sizes:
        return None
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _engine_options(options: pb.SegmentOptions) -> SegmentOptions:
    reject_unknown_fields(options)
    if options.mode not in _MODES:
        raise InvalidOption(f"unknown mode {options.mode}; expected MODE_WHOLE or MODE_SLIDE")
    if options.tta not in _PRESETS:
        raise InvalidOption(
            f"unknown tta {options.tta}; expected TEST_TIME_AUGMENTATION_OFFICIAL or TEST_TIME_AUGMENTATION_MMSEG"
        )
    scales = tuple(float(s) for s in options.scales) or (1.0,)
    if not all(math.isfinite(s) for s in scales):
        raise InvalidOption(f"scales must be finite numbers, got {list(scales)}")
    max_size = int(options.max_size) if options.HasField("max_size") else None
    return SegmentOptions(
        mode=_MODES[options.mode],
        scales=scales,
        flip=options.flip if options.HasField("flip") else None,
        max_size=max_size,
        tta=_PRESETS[options.tta],
        base_size=_size_option(options.base_size, "base_size"),
        crop_size=_size_option(options.crop_size, "crop_size"),
        stride=_size_option(options.stride, "stride"),
    )


def _output_kinds(options: pb.SegmentOptions) -> frozenset[int]:
    kinds = frozenset(options.outputs) or frozenset(DEFAULT_OUTPUTS)
    unknown = sorted(kinds - _KNOWN_OUTPUTS)
    if unknown:
        raise InvalidOption(
            f"unknown output kind(s) {unknown}; expected values of OutputKind other than UNSPECIFIED"
        )
    if options.label_encoding not in _LABEL_ENCODINGS:
        raise InvalidOption(f"unknown label_encoding {options.label_encoding}")
    if options.HasField("alpha") and not (0.0 <= options.alpha <= 1.0):
        raise InvalidOption(f"alpha must be within [0, 1], got {options.alpha:g}")
    return kinds


def _raw_pixels(raw: pb.RawImage, max_pixels: int) -> np.ndarray:
    height, width = int(raw.height), int(raw.width)
    if height < 1 or width < 1:
        raise InvalidImage(f"raw image needs positive height and width, got {height}x{width}")
    if height * width > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    expected = height * width * 3
    if len(raw.pixels) != expected:
        raise InvalidImage(
            f"raw image {height}x{width} RGB needs {expected} bytes (height * width * 3), got {len(raw.pixels)}"
        )
    return np.frombuffer(raw.pixels, dtype=np.uint8).reshape(height, width, 3)


def _metadata_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def model_info_proto(info: ModelInfo, versions: list[str] | None = None) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        version=info.version,
        versions=versions or [info.version],
        classes=list(info.classes),
        palette=[pb.Color(r=int(r), g=int(g), b=int(b)) for r, g, b in info.palette],
        provider=info.provider,
        inputs=[pb.TensorSpec(name=t.name, dtype=t.dtype.name, shape=list(t.shape)) for t in info.inputs],
        outputs=[pb.TensorSpec(name=t.name, dtype=t.dtype.name, shape=list(t.shape)) for t in info.outputs],
        metadata={str(k): _metadata_text(v) for k, v in info.metadata.items()},
    )


class SegmentationServicer(pb_grpc.SegmentationServiceServicer):
    def __init__(self, settings: Settings, engine: Engine, *, stream_window: int | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._max_pixels = int(settings.max_pixels)
        # Enough frames in flight for the batcher to merge them, not so many that one stream fills the queue.
        self._window = stream_window or max(2, min(int(settings.max_batch_size), 16))

    # --- RPCs -------------------------------------------------------------------------------------
    @translate_errors
    async def Segment(
        self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentResponse:
        self._check_ready()
        return await self._segment(request, context)

    @translate_stream_errors
    async def SegmentStream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        self._check_ready()

        async def one(request: pb.SegmentRequest) -> pb.SegmentResponse:
            try:
                return await self._segment(request, context)
            except DanetError as exc:
                code, message = status_for(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged by status_for; the stream goes on
                code, message = status_for(exc)
            return pb.SegmentResponse(id=request.id, error=pb.Error(code=code.name, message=message))

        async for reply in ordered_replies(request_iterator, one, window=self._window):
            yield reply

    @translate_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        if not self._engine.loaded:
            raise NotReady("models are still loading")
        models = self._engine.list_models()
        return pb.ListModelsResponse(
            models=[model_info_proto(m, [v.version for v in self._engine.versions(m.name)]) for m in models],
            default_model=self._engine.default_model or "",
        )

    # --- work -------------------------------------------------------------------------------------
    def _check_ready(self) -> None:
        if not self._engine.ready:
            raise NotReady("the server is not ready (models loading or shutting down)")

    async def _image(self, request: pb.SegmentRequest) -> np.ndarray:
        which = request.WhichOneof("image")
        if which == "raw":
            return _raw_pixels(request.raw, self._max_pixels)
        if which == "encoded":
            return await asyncio.to_thread(imaging.decode_image, request.encoded, max_pixels=self._max_pixels)
        raise InvalidImage("the request carries no image: set `encoded` or `raw`")

    async def _segment(
        self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentResponse:
        reject_unknown_fields(request)
        options = request.options
        kinds = _output_kinds(options)
        engine_options = _engine_options(options)
        version = options.version or None
        info = self._engine.admit(options.model or None, version)  # NOT_FOUND / RESOURCE_EXHAUSTED first
        started = time.perf_counter()
        image = await self._image(request)
        decode_ms = (time.perf_counter() - started) * 1000.0
        if pb.OUTPUT_KIND_CONFIDENCE in kinds and not info.has_confidence:
            raise InvalidOption(f"model {info.name!r} has no confidence output")
        result = await within_deadline(
            context, self._engine.segment(info.name, image, engine_options, version=version)
        )
        info = result.info or info  # the version that answered (a swap may have happened meanwhile)
        reply = await asyncio.to_thread(self._reply, request, info, image, result, kinds)
        reply.timings_ms["decode_ms"] = decode_ms
        return reply

    def _reply(
        self,
        request: pb.SegmentRequest,
        info: ModelInfo,
        image: np.ndarray,
        result: SegmentResult,
        kinds: frozenset[int],
    ) -> pb.SegmentResponse:
        """Encode the requested outputs (runs in a worker thread: PNG encoding is CPU work)."""
        started = time.perf_counter()
        labels = result.labels
        height, width = labels.shape
        reply = pb.SegmentResponse(
            id=request.id,
            model=result.model,
            model_version=result.version,
            provider=result.provider,
            height=height,
            width=width,
        )
        if pb.OUTPUT_KIND_INDEX in kinds:
            raw = request.options.label_encoding == pb.LABEL_ENCODING_RAW
            reply.labels.CopyFrom(
                pb.LabelMap(
                    encoding=pb.LABEL_ENCODING_RAW if raw else pb.LABEL_ENCODING_PNG,
                    height=height,
                    width=width,
                    dtype=labels.dtype.name,
                    data=_little_endian(labels) if raw else imaging.encode_png(labels),
                )
            )
        if pb.OUTPUT_KIND_COLOR in kinds:
            if labels.dtype == np.uint8 and len(info.palette) <= 256:
                reply.color_png = imaging.encode_png(labels, palette=info.palette)
            else:
                reply.color_png = imaging.encode_png(imaging.colorize(labels, info.palette))
        if pb.OUTPUT_KIND_OVERLAY in kinds:
            alpha = request.options.alpha if request.options.HasField("alpha") else DEFAULT_ALPHA
            reply.overlay_png = imaging.encode_png(
                imaging.overlay(image, labels, info.palette, alpha), level=1
            )
        if pb.OUTPUT_KIND_STATS in kinds:
            for entry in imaging.class_stats(labels, info.classes):
                stat = reply.stats.add(**entry)
                if result.confidence is not None:
                    stat.mean_confidence = float(result.confidence[labels == entry["id"]].mean())
        if pb.OUTPUT_KIND_CONFIDENCE in kinds and result.confidence is not None:
            reply.confidence = _little_endian(result.confidence.astype(np.float32, copy=False))
        reply.timings_ms.update({k: float(v) for k, v in result.timings.items()})
        reply.timings_ms["encode_ms"] = (time.perf_counter() - started) * 1000.0
        return reply
