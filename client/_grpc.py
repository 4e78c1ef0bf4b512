"""gRPC transport: danet.segmentation.v1.SegmentationService + grpc.health.v1."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._errors import DanetClientError
from client._inputs import Image, Options
from client._types import ClassStat, ModelSummary, Segmentation
from protos.gen.danet.segmentation.v1 import segmentation_pb2 as pb
from protos.gen.danet.segmentation.v1 import segmentation_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 256 * 1024 * 1024

_OUTPUTS = {
    "index": [pb.OUTPUT_KIND_INDEX, pb.OUTPUT_KIND_STATS],
    "color": [pb.OUTPUT_KIND_COLOR],
    "overlay": [pb.OUTPUT_KIND_OVERLAY],
    "json": [pb.OUTPUT_KIND_STATS],
}
_MODES = {None: pb.MODE_UNSPECIFIED, "whole": pb.MODE_WHOLE, "slide": pb.MODE_SLIDE}
_TTA = {
    None: pb.TEST_TIME_AUGMENTATION_UNSPECIFIED,
    "official": pb.TEST_TIME_AUGMENTATION_OFFICIAL,
    "mmseg": pb.TEST_TIME_AUGMENTATION_MMSEG,
}
_UNREACHABLE_HINTS = ("failed to connect", "connection refused", "dns resolution failed", "name resolution")


def error_from_rpc(exc: grpc.RpcError, target: str) -> DanetClientError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and any(h in details.lower() for h in _UNREACHABLE_HINTS):
        return DanetClientError(f"cannot reach the gRPC server at {target}: {details}", code="unreachable")
    name = code.name if code is not None else "UNKNOWN"
    return DanetClientError(f"{name}: {details}", code=name)


def request_from(image: Image, options: Options, request_id: str = "") -> pb.SegmentRequest:
    request = pb.SegmentRequest(
        id=request_id,
        options=pb.SegmentOptions(
            model=options.model or "",
            outputs=_OUTPUTS[options.format],
            label_encoding=pb.LABEL_ENCODING_PNG,
            mode=_MODES[options.mode],
            scales=list(options.scales),
            tta=_TTA[options.tta],
            base_size=list(options.base_size),
            crop_size=list(options.crop_size),
            stride=list(options.stride),
        ),
    )
    if options.flip is not None:
        request.options.flip = options.flip
    if options.alpha is not None:
        request.options.alpha = options.alpha
    if options.max_size is not None:
        request.options.max_size = options.max_size
    if image.pixels is not None:
        height, width = image.pixels.shape[:2]
        request.raw.CopyFrom(pb.RawImage(height=height, width=width, pixels=image.pixels.tobytes()))
    else:
        request.encoded = image.as_encoded()
    return request


def segmentation_from(reply: pb.SegmentResponse, format: str) -> Segmentation:
    stats = tuple(ClassStat(s.id, s.name, s.pixels, s.fraction) for s in reply.stats)
    timings = dict(reply.timings_ms)
    png: bytes | None = None
    document = None
    if format == "index":
        png = reply.labels.data
    elif format == "color":
        png = reply.color_png
    elif format == "overlay":
        png = reply.overlay_png
    else:
        # The same shape as REST's format=json reply.
        classes = []
        for s in reply.stats:
            entry: dict[str, object] = {
                "id": s.id,
                "name": s.name,
                "pixels": s.pixels,
                "fraction": s.fraction,
            }
            if s.HasField("mean_confidence"):
                entry["mean_confidence"] = s.mean_confidence
            classes.append(entry)
        document = {
            "model": reply.model,
            "provider": reply.provider,
            "width": reply.width,
            "height": reply.height,
            "classes": classes,
            "timings": timings,
        }
    return Segmentation(
        format=format,
        model=reply.model,
        height=reply.height,
        width=reply.width,
        provider=reply.provider or None,
        png=png,
        stats=stats if (format in ("index", "json")) else None,
        timings_ms=timings,
        document=document,
    )


def key_metadata(api_key: str | None) -> tuple[tuple[str, str | bytes], ...]:
    """The API key as gRPC metadata: ``authorization: Bearer <key>``, or, for a key that is not printable
    ASCII (which text metadata cannot carry), binary ``x-api-key-bin`` with its UTF-8 bytes."""
    if not api_key:
        return ()
    if api_key.isascii() and api_key.isprintable():
        return (("authorization", f"Bearer {api_key}"),)
    return (("x-api-key-bin", api_key.encode("utf-8")),)


class GrpcTransport:
    def __init__(
        self,
        target: str,
        *,
        api_key: str | None,
        timeout: float,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._metadata = key_metadata(api_key)
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.SegmentationServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def segment(self, image: Image, options: Options) -> Segmentation:
        try:
            reply = self._stub.Segment(
                request_from(image, options), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self.target) from None
        return segmentation_from(reply, options.format)

    def list_models(self) -> list[ModelSummary]:
        try:
            reply = self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self.target) from None
        return [
            ModelSummary(
                name=m.name,
                classes=tuple(m.classes),
                palette=tuple((c.r, c.g, c.b) for c in m.palette),
                provider=m.provider or None,
            )
            for m in reply.models
        ]

    def ready(self) -> bool:
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=self._timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self.target) from None
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self._channel.close()
