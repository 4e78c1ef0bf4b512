"""``POST /segment``: an image in, a class map (colour / index / overlay PNG) or JSON statistics out."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from server.engine import SegmentResult
from server.errors import InvalidOption
from server.http.deps import EngineDep, SettingsDep
from server.http.upload import UPLOAD_FIELDS, read_multipart_image
from server.imaging import (
    check_media_type,
    class_stats,
    colorize,
    decode_image,
    encode_png,
    media_type,
    overlay,
    rle_encode,
)
from server.model import ModelInfo
from server.tta import SegmentOptions

router = APIRouter(tags=["segmentation"])

Format = Literal["color", "index", "overlay", "json"]

_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "The image: a multipart form with a file field `image` (or `file`, as many clients "
    "name it; send one of the two), or the raw image bytes (JPEG, PNG, WebP, BMP, TIFF or GIF).",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {name: _IMAGE_SCHEMA for name in UPLOAD_FIELDS},
                "minProperties": 1,
                "maxProperties": 1,
            }
        },
        **{
            kind: {"schema": _IMAGE_SCHEMA}
            for kind in (
                "image/jpeg",
                "image/png",
                "image/webp",
                "image/bmp",
                "image/tiff",
                "image/gif",
                "application/octet-stream",
            )
        },
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`color`/`overlay`: RGB or palette PNG; `index`: 8-bit (16-bit above 256 classes) grey PNG of "
        "class ids; `json`: statistics. Images have the input's exact width and height.",
        "content": {"image/png": {}, "application/json": {}},
    },
    400: {"description": "undecodable image"},
    404: {"description": "unknown model"},
    413: {"description": "body or image too large"},
    415: {"description": "unsupported media type"},
    422: {"description": "bad option"},
    503: {"description": "overloaded (Retry-After) or not ready"},
}


def negotiate_format(requested: str | None, accept: str | None) -> str:
    """Query ``format`` wins; otherwise ``Accept: application/json`` means json; otherwise color."""
    if requested is not None:
        return requested
    for part in (accept or "").split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind == "application/json":
            return "json"
        if kind in ("image/png", "image/*", "*/*"):
            return "color"
    return "color"


def parse_scales(text: str | None) -> tuple[float, ...]:
    if text is None or not text.strip():
        return (1.0,)
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise InvalidOption(f"scales must be comma-separated numbers, got {text!r}") from exc


def parse_size_option(text: str | None, name: str) -> int | tuple[int, int] | None:
    """``N`` or ``AxB`` (e.g. ``768``, ``2048x1024``)."""
    if text is None or not text.strip():
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise InvalidOption(f"{name} must be a number or AxB (e.g. 768 or 2048x1024), got {text!r}")


_PRESET = "Only with `tta`; default: the model's eval metadata, else the procedure's own (see docs/rest.md)."


async def read_image_bytes(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The image bytes and their declared media type, from a multipart field ``image`` or ``file``, or the
    raw body.

    The body as a whole is capped while it streams in (``ServiceMiddleware``); the image part is capped
    here too, since a multipart body may carry a little more than the image."""
    content_type = request.headers.get("content-type")
    if media_type(content_type) == "multipart/form-data":
        return await read_multipart_image(request, max_bytes)
    check_media_type(content_type)  # 415 before the body is read
    return await request.body(), content_type


@router.post(
    "/segment",
    summary="Segment an image",
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=_RESPONSES,
    response_class=Response,
)
async def segment(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    model: Annotated[
        str | None, Query(description="Model name (default: the server's default model).")
    ] = None,
    version: Annotated[
        str | None, Query(description="Model version (default: the newest ready version).")
    ] = None,
    format: Annotated[
        Format | None,
        Query(
            description="color | index | overlay | json (default color; `Accept: application/json` selects json)."
        ),
    ] = None,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Overlay opacity of the class colours.")] = 0.5,
    mode: Annotated[
        Literal["whole", "slide"],
        Query(
            description="whole image, or sliding window with overlap (needs a model exported with logits)."
        ),
    ] = "whole",
    scales: Annotated[
        str | None, Query(description="Comma-separated test-time scales, e.g. `0.75,1,1.25` (needs logits).")
    ] = None,
    flip: Annotated[
        bool | None,
        Query(
            description="Add horizontally flipped inference (needs logits). Default false; "
            "with tta=official true, as in the official evaluation."
        ),
    ] = None,
    tta: Annotated[
        Literal["official", "mmseg"] | None,
        Query(
            description="Reproduce a published evaluation: `official` (DANet / PyTorch-Encoding "
            "MultiEvalModule) or `mmseg` (MMSegmentation slide/whole inference + SegTTAModel). "
            "Unset: this project's procedure (mode, scales, flip)."
        ),
    ] = None,
    base_size: Annotated[
        str | None,
        Query(
            description="`N` or `LONGxSHORT`. official: long side at scale 1 (Cityscapes 2048); mmseg: the "
            "test pipeline's Resize scale, keep_ratio (Cityscapes 2048x1024). " + _PRESET
        ),
    ] = None,
    crop_size: Annotated[
        str | None,
        Query(description="Sliding-window crop, `N` or `HxW` (official Cityscapes 768). " + _PRESET),
    ] = None,
    stride: Annotated[
        str | None,
        Query(description="Sliding-window stride, `N` or `HxW` (default int(crop_size * 2/3)). " + _PRESET),
    ] = None,
    max_size: Annotated[
        int | None, Query(ge=8, description="Longest side used for inference; larger images are shrunk.")
    ] = None,
    rle: Annotated[
        bool, Query(description="json only: add a COCO run-length-encoded mask per class.")
    ] = False,
) -> Response:
    t0 = time.perf_counter()
    chosen = negotiate_format(format, request.headers.get("accept"))
    options = SegmentOptions(
        mode=mode,
        scales=parse_scales(scales),
        flip=flip,
        max_size=max_size,
        tta=tta,
        base_size=parse_size_option(base_size, "base_size"),
        crop_size=parse_size_option(crop_size, "crop_size"),
        stride=parse_size_option(stride, "stride"),
    )
    options.validate()
    info = engine.admit(model, version)  # 404 / 503 before reading the body
    data, declared = await read_image_bytes(request, settings.max_upload_bytes)
    t1 = time.perf_counter()
    image = await asyncio.to_thread(decode_image, data, max_pixels=settings.max_pixels, content_type=declared)
    decode_ms = (time.perf_counter() - t1) * 1000
    result = await engine.segment(info.name, image, options, version=version)
    info = result.info or info  # the version that answered (a swap may have happened meanwhile)
    t2 = time.perf_counter()
    body, media = await asyncio.to_thread(_render, chosen, image, result, info, alpha, rle, options)
    timings = {"decode_ms": decode_ms, **result.timings, "encode_ms": (time.perf_counter() - t2) * 1000}
    timings["total_ms"] = (time.perf_counter() - t0) * 1000
    headers = {
        "X-Danet-Provider": result.provider,
        "X-Danet-Model": result.model,
        "X-Danet-Model-Version": result.version,
        "X-Danet-Inference-Ms": f"{result.timings.get('inference_ms', 0.0):.2f}",
    }
    if chosen == "json":
        assert isinstance(body, dict)
        body["timings"] = {k: round(v, 3) for k, v in timings.items()}
        return JSONResponse(body, headers=headers)
    assert isinstance(body, bytes)
    return Response(body, media_type=media, headers=headers)


def _render(
    chosen: str,
    image: np.ndarray,
    result: SegmentResult,
    info: ModelInfo,
    alpha: float,
    rle: bool,
    options: SegmentOptions,
) -> tuple[bytes | dict[str, Any], str]:
    labels = result.labels
    if chosen == "index":
        return encode_png(labels), "image/png"
    if chosen == "color":
        if info.num_classes <= 256 and labels.dtype == np.uint8:
            return encode_png(labels, palette=info.palette), "image/png"
        return encode_png(colorize(labels, info.palette)), "image/png"
    if chosen == "overlay":
        return encode_png(overlay(image, labels, info.palette, alpha), level=1), "image/png"
    stats = class_stats(labels, info.classes)
    for entry in stats:
        mask = labels == entry["id"]
        if result.confidence is not None:
            entry["mean_confidence"] = round(float(result.confidence[mask].mean()), 6)
        if rle:
            entry["rle"] = rle_encode(mask)
    payload: dict[str, Any] = {
        "model": result.model,
        "version": result.version,
        "provider": result.provider,
        "width": int(labels.shape[1]),
        "height": int(labels.shape[0]),
        "inference_size": list(result.inference_size),
        "mode": options.mode,
        "scales": list(options.scales),
        "flip": options.use_flip,
        "num_classes": info.num_classes,
        "classes": stats,
    }
    if result.preset is not None:
        payload["tta"] = result.preset
    if result.confidence is not None:
        payload["mean_confidence"] = round(float(result.confidence.mean()), 6)
    return payload, "application/json"
