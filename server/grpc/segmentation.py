"""``danet.segmentation.v1.SegmentationService``: translate protos <-> engine calls, nothing more."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import unknown_fields
from google.protobuf.message import Message

from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from server import tracing
from server.engine import Engine, ModelInfo
from server.errors import DanetError, InvalidImage, InvalidOption, NotReady
from server.grpc.deadlines import within_deadline
from server.grpc.errors import status_for, translate_errors, translate_stream_errors
from server.grpc.streaming import ordered_replies
from server.kserve.codec import little_endian
from server.segmentation import Segmenter, SegmentOptions, SegmentResult, render
from server.segmentation.options import size_from_values
from server.settings import Settings

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SegmentationService"].full_name
DEFAULT_OUTPUTS = (pb.OUTPUT_KIND_INDEX, pb.OUTPUT_KIND_STATS)
_MODES = {pb.MODE_UNSPECIFIED: "whole", pb.MODE_WHOLE: "whole", pb.MODE_SLIDE: "slide"}
_KNOWN_OUTPUTS = frozenset(pb.OutputKind.values()) - {pb.OUTPUT_KIND_UNSPECIFIED}
_LABEL_ENCODINGS = frozenset(pb.LabelEncoding.values())
_PRESETS = {
    pb.TEST_TIME_AUGMENTATION_UNSPECIFIED: None,
    pb.TEST_TIME_AUGMENTATION_OFFICIAL: "official",
    pb.TEST_TIME_AUGMENTATION_MMSEG: "mmseg",
}


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


def _segment_options(options: pb.SegmentOptions) -> SegmentOptions:
    reject_unknown_fields(options)
    if options.mode not in _MODES:
        raise InvalidOption(f"unknown mode {options.mode}; expected MODE_WHOLE or MODE_SLIDE")
    if options.tta not in _PRESETS:
        raise InvalidOption(
            f"unknown tta {options.tta}; expected TEST_TIME_AUGMENTATION_OFFICIAL or TEST_TIME_AUGMENTATION_MMSEG"
        )
    return SegmentOptions(
        mode=_MODES[options.mode],
        scales=tuple(options.scales) or (1.0,),
        flip=options.flip if options.HasField("flip") else None,
        max_size=int(options.max_size) if options.HasField("max_size") else None,
        tta=_PRESETS[options.tta],
        base_size=size_from_values(options.base_size, "base_size"),
        crop_size=size_from_values(options.crop_size, "crop_size"),
        stride=size_from_values(options.stride, "stride"),
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
        self._segmenter = Segmenter(engine)
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
            return self._segmenter.raw(int(request.raw.height), int(request.raw.width), request.raw.pixels)
        if which == "encoded":
            return await self._segmenter.decode(request.encoded)
        raise InvalidImage("the request carries no image: set `encoded` or `raw`")

    async def _segment(
        self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentResponse:
        reject_unknown_fields(request)
        options = request.options
        kinds = _output_kinds(options)
        segment_options = _segment_options(options)
        version = options.version or None
        # NOT_FOUND / UNAVAILABLE / RESOURCE_EXHAUSTED / INVALID_ARGUMENT before the image is decoded; from
        # decoding an encoded image on, a queue place is held for the inference (raw pixels take theirs
        # at the first run)
        with self._segmenter.admit(options.model or None, version, segment_options) as info:
            if pb.OUTPUT_KIND_CONFIDENCE in kinds and not info.has_confidence:
                raise InvalidOption(f"model {info.name!r} has no confidence output")
            observer = self._engine.observer
            with observer.request(f"{SERVICE_NAME}/Segment", tracing.grpc_carrier(context), info):
                started = time.perf_counter()
                with observer.step("decode", info):
                    image = await self._image(request)
                decode_ms = (time.perf_counter() - started) * 1000.0
                result = await within_deadline(
                    context, self._segmenter.segment(image, segment_options, model=info.name, version=version)
                )
                with observer.step("encode", result.info):
                    reply = await self._engine.codecs.run(_reply, request, image, result, kinds)
        reply.timings_ms["decode_ms"] = decode_ms
        return reply


def _reply(
    request: pb.SegmentRequest, image: np.ndarray, result: SegmentResult, kinds: frozenset[int]
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
                data=little_endian(labels) if raw else render.index_png(labels),
            )
        )
    if pb.OUTPUT_KIND_COLOR in kinds:
        reply.color_png = render.color_png(labels, result.info)
    if pb.OUTPUT_KIND_OVERLAY in kinds:
        alpha = request.options.alpha if request.options.HasField("alpha") else render.DEFAULT_ALPHA
        reply.overlay_png = render.overlay_png(image, labels, result.info, alpha)
    if pb.OUTPUT_KIND_STATS in kinds:
        for entry in render.class_statistics(result):
            reply.stats.add(**entry)
    if pb.OUTPUT_KIND_CONFIDENCE in kinds and result.confidence is not None:
        reply.confidence = little_endian(result.confidence.astype(np.float32, copy=False))
    reply.timings_ms.update({k: float(v) for k, v in result.timings.items()})
    reply.timings_ms["encode_ms"] = (time.perf_counter() - started) * 1000.0
    return reply
