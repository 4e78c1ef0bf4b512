"""KServe v2 / Open Inference Protocol REST endpoints (``/v2``), compatible with unmodified tritonclient.http.

JSON tensors and the binary-data extension: the request body is the JSON header followed by raw tensor
bytes, the header length in ``Inference-Header-Content-Length`` (tritonclient sends no Content-Type).
Errors use the protocol's ``{"error": "message"}`` (see ``server.http.errors``).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import tracing
from server.engine import Engine
from server.errors import InvalidOption, NotReady, PayloadTooLarge
from server.http.deps import EngineDep, SettingsDep
from server.kserve import codec, shm
from server.kserve.shm import SharedMemoryRegistry
from server.model import ModelInfo
from server.segmentation.cost import Limits

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
_DATA_MARK = "\u0000danet-data-"  # stands for a tensor's JSON text until the reply is assembled
MODEL_VERSION_HEADER = "X-Danet-Model-Version"
EXTENSIONS = ["binary_tensor_data", *codec.EXTENSIONS]


def _model(engine: Engine, name: str, version: str | None) -> ModelInfo:
    return engine.get_model(name, version or None)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": codec.SERVER_NAME, "version": codec.SERVER_VERSION, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready")
async def ready(engine: EngineDep) -> Response:
    if not engine.ready:
        raise NotReady("models are loading or warming up" if not engine.closing else "shutting down")
    return JSONResponse({"ready": True})


@router.get("/models/stats", summary="Statistics of every model (statistics extension)")
async def statistics(engine: EngineDep) -> dict[str, Any]:
    return codec.model_statistics(engine, "", "")


@router.get("/models/{model}/stats", summary="Statistics of a model's versions")
@router.get("/models/{model}/versions/{version}/stats", summary="Statistics of one version")
async def model_statistics(engine: EngineDep, model: str, version: str | None = None) -> dict[str, Any]:
    return codec.model_statistics(engine, model, version or "")


@router.get("/models/{model}", summary="Model metadata")
@router.get("/models/{model}/versions/{version}", summary="Model metadata (version)")
async def model_metadata(engine: EngineDep, model: str, version: str | None = None) -> dict[str, Any]:
    info = _model(engine, model, version)
    return {
        "name": info.name,
        "versions": [v.version for v in engine.versions(info.name)],
        "platform": codec.PLATFORM,
        "inputs": [t.to_dict() for t in info.inputs],
        "outputs": [t.to_dict() for t in info.outputs],
    }


@router.get("/models/{model}/ready", summary="Model ready")
@router.get("/models/{model}/versions/{version}/ready", summary="Model ready (version)")
async def model_ready(engine: EngineDep, model: str, version: str | None = None) -> Response:
    info = _model(engine, model, version)
    if not engine.ready:
        raise NotReady(f"model {info.name!r} is not ready")
    return JSONResponse({"name": info.name, "ready": True})


@router.get("/models/{model}/config", summary="Model configuration (Triton style)")
@router.get("/models/{model}/versions/{version}/config", summary="Model configuration (version)")
async def model_config(engine: EngineDep, model: str, version: str | None = None) -> dict[str, Any]:
    return codec.model_config(engine.instance(model, version or None))


@router.post("/models/{model}/infer", summary="Inference (JSON or binary tensor data)")
@router.post("/models/{model}/versions/{version}/infer", summary="Inference (version)")
async def infer(
    request: Request, engine: EngineDep, settings: SettingsDep, model: str, version: str | None = None
) -> Response:
    info = _model(engine, model, version)
    with engine.observer.request("POST /v2/models/{model}/infer", request.headers, info):
        return await _infer(request, engine, settings, info, version)


async def _infer(
    request: Request, engine: Engine, settings: Any, info: ModelInfo, version: str | None
) -> Response:
    observer, regions = engine.observer, engine.shared_memory
    raw = await request.body()
    with observer.step("decode", info, **{tracing.BYTES: len(raw)}):
        body = _decompress(raw, request.headers.get("content-encoding"), settings.max_upload_bytes)
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        images = _read_image_input(header, binary, info, engine.limits, regions)
        requested = _requested_outputs(header, info, regions)
        codec.check_reply_size(
            info, images.shape, requested, settings.max_reply_bytes, settings.max_json_reply_bytes
        )
    info, results = await engine.infer_versioned(
        info.name, images, [r.name for r in requested], version=version or None
    )
    with observer.step("encode", info) as step:
        json_part, blobs = await engine.codecs.run(_encode, header, info, requested, results)
        step.set(tracing.BYTES, len(json_part) + sum(len(b) for b in blobs))
    headers = {
        "X-Danet-Provider": info.provider,
        "X-Danet-Model": info.name,
        MODEL_VERSION_HEADER: info.version,
    }
    if not blobs:
        return Response(json_part, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(len(json_part))
    return Response(json_part + b"".join(blobs), media_type="application/octet-stream", headers=headers)


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header (the whole body without the binary extension) and the bytes after it."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError as exc:
            raise InvalidOption(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from exc
        if not 0 <= split <= len(body):
            raise InvalidOption(f"{HEADER_LENGTH} {split} is outside the body of {len(body)} bytes")
        header_bytes, binary = body[:split], body[split:]
    else:
        header_bytes, binary = body, b""
    try:
        header = json.loads(header_bytes or b"{}")
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidOption(f"inference request is not valid JSON: {reason}") from None
    if not isinstance(header, dict):
        raise InvalidOption("inference request must be a JSON object")
    return header, binary


def _encode(
    header: dict[str, Any], info: ModelInfo, requested: list[codec.Requested], results: dict[str, np.ndarray]
) -> tuple[bytes, list[bytes]]:
    """The reply: JSON header and binary blobs (runs in a worker thread: large tensors take time)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    arrays: list[tuple[str, np.ndarray]] = []
    for out in requested:
        value = np.ascontiguousarray(results[out.name])
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": codec.datatype_of(value),
            "shape": list(value.shape),
        }
        if out.shm is not None:
            raw = codec.little_endian(value)
            out.shm.write(raw)
            entry["parameters"] = {shm.REGION: out.shm.region, shm.BYTE_SIZE: len(raw)}
            if out.shm.offset:
                entry["parameters"][shm.OFFSET] = out.shm.offset
        elif out.binary:
            raw = codec.little_endian(value)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = placeholder = f"{_DATA_MARK}{len(arrays)}"
            arrays.append((placeholder, value))
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": info.name, "model_version": info.version, "outputs": outputs}
    if "id" in header:
        response["id"] = header["id"]
    text = json.dumps(response)
    for placeholder, value in arrays:  # tensors as JSON text, built in chunks (see codec.json_text)
        text = text.replace(json.dumps(placeholder), codec.json_text(value), 1)
    return text.encode(), blobs


# --- the repository extension ---------------------------------------------------------------------
async def _json_body(request: Request) -> dict[str, Any]:
    """tritonclient posts an empty body or a JSON object (``{"ready": ...}``, ``{"parameters": ...}``)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidOption(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidOption("request body must be a JSON object")
    return body


@router.post("/repository/index", summary="Repository index: every model version and its state")
async def repository_index(request: Request, engine: EngineDep) -> JSONResponse:
    body = await _json_body(request)
    return JSONResponse(engine.repository.index(ready_only=bool(body.get("ready", False))))


@router.post("/repository/models/{model}/load", summary="Load or reload a model (explicit mode)")
async def repository_load(request: Request, engine: EngineDep, model: str) -> JSONResponse:
    parameters = (await _json_body(request)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidOption("'parameters' must be a JSON object")
    await engine.repository.load_model(model, list(parameters))
    return JSONResponse({})


@router.post("/repository/models/{model}/unload", summary="Unload every version of a model (explicit mode)")
async def repository_unload(request: Request, engine: EngineDep, model: str) -> JSONResponse:
    await _json_body(request)  # parameters.unload_dependents: there are no dependents here
    await engine.repository.unload_model(model)
    return JSONResponse({})


# --- the system shared memory extension ----------------------------------------------------------
@router.get("/systemsharedmemory/status", summary="Every registered system shared memory region")
@router.get("/systemsharedmemory/region/{region}/status", summary="One system shared memory region")
async def shm_status(engine: EngineDep, region: str = "") -> JSONResponse:
    return JSONResponse(engine.shared_memory.status(region))


@router.post("/systemsharedmemory/region/{region}/register", summary="Register a system shared memory region")
async def shm_register(request: Request, engine: EngineDep, region: str) -> JSONResponse:
    body = await _json_body(request)
    engine.shared_memory.register(region, body.get("key"), body.get("offset", 0), body.get("byte_size"))
    return JSONResponse({})


@router.post("/systemsharedmemory/unregister", summary="Unregister every system shared memory region")
@router.post("/systemsharedmemory/region/{region}/unregister", summary="Unregister a region")
async def shm_unregister(engine: EngineDep, region: str = "") -> JSONResponse:
    engine.shared_memory.unregister(region)
    return JSONResponse({})


def _read_image_input(
    header: dict[str, Any], binary: bytes, info: ModelInfo, limits: Limits, regions: SharedMemoryRegistry
) -> np.ndarray:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidOption(f"expected exactly one input {codec.INPUT_IMAGE!r}, got {_names(inputs)}")
    tensor = inputs[0]
    shape = codec.image_shape(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), info, limits)
    parameters = tensor.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise InvalidOption(f"input {codec.INPUT_IMAGE!r}: 'parameters' must be a JSON object")
    ref = regions.reference(parameters, codec.INPUT_IMAGE)
    if ref is not None:
        if "data" in tensor or "binary_data_size" in parameters:
            raise InvalidOption(f"input {codec.INPUT_IMAGE!r} is in shared memory: send no data with it")
        return codec.image_from_bytes(shape, ref.read())
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidOption(
                f"input {codec.INPUT_IMAGE!r} declares binary_data_size {size!r}; {len(binary)} bytes follow "
                "the header"
            )
        return codec.image_from_bytes(shape, binary[:size])
    data = tensor.get("data")
    if data is None:
        raise InvalidOption(f"input {codec.INPUT_IMAGE!r} has neither 'data' nor parameters.binary_data_size")
    return codec.image_from_values(shape, data)


def _requested_outputs(
    header: dict[str, Any], info: ModelInfo, regions: SharedMemoryRegistry
) -> list[codec.Requested]:
    parameters = header.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise InvalidOption("'parameters' must be a JSON object")
    binary_all = parameters.get("binary_data_output", False) is True
    wanted = header.get("outputs")
    if wanted is None:
        return [codec.Requested(n, binary_all) for n in codec.requested_outputs(info, [])]
    if not isinstance(wanted, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        raise InvalidOption("'outputs' must be a list of {'name': ...} objects")
    names = codec.requested_outputs(info, [o["name"] for o in wanted])
    requested = []
    for name, output in zip(names, wanted, strict=True):
        params = output.get("parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InvalidOption(f"output {name!r}: 'parameters' must be a JSON object")
        if "classification" in params:
            raise InvalidOption("the classification extension is not supported")
        binary = binary_all or params.get("binary_data", False) is True
        requested.append(codec.Requested(name, binary, regions.reference(params, name)))
    return requested


def _names(inputs: Any) -> list[Any]:
    if not isinstance(inputs, list):
        return []
    return [t.get("name") if isinstance(t, dict) else t for t in inputs]


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    kind = (encoding or "").strip().lower()
    if kind in ("", "identity"):
        return body
    if kind not in ("gzip", "deflate"):
        raise InvalidOption(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 16 if kind == "gzip" else zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidOption(f"cannot decompress {kind} body: {exc}") from exc
    if len(out) > limit or decoder.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request exceeds the limit of {limit} bytes")
    return out
