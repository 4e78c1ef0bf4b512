"""``POST /segment``: an image in, a class map (colour / index / overlay PNG) or JSON statistics out."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from server import tracing
from server.http.deps import SegmenterDep, SettingsDep
from server.http.upload import UPLOAD_FIELDS, read_multipart_image
from server.imaging import check_media_type, media_type
from server.segmentation import SegmentOptions
from server.segmentation.options import parse_scales, parse_size
from server.segmentation.render import render

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
    segmenter: SegmenterDep,
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
        base_size=parse_size(base_size, "base_size"),
        crop_size=parse_size(crop_size, "crop_size"),
        stride=parse_size(stride, "stride"),
    )
    # 404 / 503 / 422 before reading the body; from decoding on, a queue place is held for the inference
    with segmenter.admit(model, version, options) as info:
        observer = segmenter.engine.observer
        with observer.request("POST /segment", request.headers, info):
            data, declared = await read_image_bytes(request, settings.max_upload_bytes)
            t1 = time.perf_counter()
            with observer.step("decode", info, **{tracing.BYTES: len(data)}):
                image = await segmenter.decode(data, declared)
            decode_ms = (time.perf_counter() - t1) * 1000
            result = await segmenter.segment(image, options, model=info.name, version=version)
            t2 = time.perf_counter()
            with observer.step("encode", result.info):
                body, media = await segmenter.engine.codecs.run(
                    render, chosen, image, result, options, alpha=alpha, rle=rle
                )
    timings = {"decode_ms": decode_ms, **result.timings, "encode_ms": (time.perf_counter() - t2) * 1000}
    timings["total_ms"] = (time.perf_counter() - t0) * 1000
    headers = {
        "X-Danet-Provider": result.provider,
        "X-Danet-Model": result.model,
        "X-Danet-Model-Version": result.version,
        "X-Danet-Inference-Ms": f"{result.timings.get('inference_ms', 0.0):.2f}",
    }
    if isinstance(body, dict):
        body["timings"] = {k: round(v, 3) for k, v in timings.items()}
        return JSONResponse(body, headers=headers)
    return Response(body, media_type=media, headers=headers)
