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

from common.contract import INPUT_IMAGE
from server import __version__
from server.engine import Engine
from server.errors import InvalidOption, NotReady, PayloadTooLarge
from server.http.deps import EngineDep, SettingsDep
from server.model import ORT_TYPES, ModelInfo, TensorSpec

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_VERSION_HEADER = "X-Danet-Model-Version"
SERVER_NAME = "danet-serve"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]
_TRITON_TYPES = {v2: f"TYPE_{v2}" for v2, _ in ORT_TYPES.values()}  # Triton model-config names


def _model(engine: Engine, name: str, version: str | None) -> ModelInfo:
    return engine.get_model(name, version or None)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready")
async def ready(engine: EngineDep) -> Response:
    if not engine.ready:
        raise NotReady("models are loading or warming up" if not engine.closing else "shutting down")
    return JSONResponse({"ready": True})


@router.get("/models/{model}", summary="Model metadata")
@router.get("/models/{model}/versions/{version}", summary="Model metadata (version)")
async def model_metadata(engine: EngineDep, model: str, version: str | None = None) -> dict[str, Any]:
    info = _model(engine, model, version)
    return {
        "name": info.name,
        "versions": [v.version for v in engine.versions(info.name)],
        "platform": "onnxruntime_onnx",
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
async def model_config(
    engine: EngineDep, settings: SettingsDep, model: str, version: str | None = None
) -> dict[str, Any]:
    info = _model(engine, model, version)

    def dims(spec: TensorSpec) -> list[int]:
        return spec.shape[1:]  # max_batch_size > 0: dims omit the batch dimension

    return {
        "name": info.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": settings.max_batch_size,
        "input": [
            {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": dims(t)} for t in info.inputs
        ],
        "output": [
            {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": dims(t)} for t in info.outputs
        ],
        "parameters": {"classes": {"string_value": json.dumps(info.classes)}},
    }


@router.post("/models/{model}/infer", summary="Inference (JSON or binary tensor data)")
@router.post("/models/{model}/versions/{version}/infer", summary="Inference (version)")
async def infer(
    request: Request, engine: EngineDep, settings: SettingsDep, model: str, version: str | None = None
) -> Response:
    info = _model(engine, model, version)
    body = _decompress(
        await request.body(), request.headers.get("content-encoding"), settings.max_upload_bytes
    )
    header_length = request.headers.get(HEADER_LENGTH)
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
    except ValueError as exc:
        raise InvalidOption(f"inference request is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidOption("inference request must be a JSON object")

    images = _read_image_input(header, binary, info)
    requested, binary_out = _requested_outputs(header, info)
    info, results = await engine.infer_versioned(
        info.name, images, [name for name, _ in requested], version=version or None
    )

    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for (name, as_binary), spec in zip(requested, (_spec(info, n) for n, _ in requested), strict=True):
        value = np.ascontiguousarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": spec.datatype, "shape": list(value.shape)}
        if as_binary or binary_out:
            raw = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = value.ravel().tolist()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": info.name, "model_version": info.version, "outputs": outputs}
    if "id" in header:
        response["id"] = header["id"]
    headers = {
        "X-Danet-Provider": info.provider,
        "X-Danet-Model": info.name,
        MODEL_VERSION_HEADER: info.version,
    }
    json_part = json.dumps(response).encode()
    if not blobs:
        return Response(json_part, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(len(json_part))
    return Response(json_part + b"".join(blobs), media_type="application/octet-stream", headers=headers)


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


def _spec(info: ModelInfo, name: str) -> TensorSpec:
    return next(t for t in info.outputs if t.name == name)


def _read_image_input(header: dict[str, Any], binary: bytes, info: ModelInfo) -> np.ndarray:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidOption(f"expected exactly one input {INPUT_IMAGE!r}, got {_names(inputs)}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_IMAGE:
        raise InvalidOption(
            f"unknown input {tensor.get('name')!r}; model {info.name!r} takes {INPUT_IMAGE!r}"
        )
    if tensor.get("datatype") != "UINT8":
        raise InvalidOption(f"input {INPUT_IMAGE!r} must be UINT8, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InvalidOption(f"input {INPUT_IMAGE!r} needs a shape [N, H, W, 3], got {shape!r}")
    if shape[3] != 3:
        raise InvalidOption(f"input {INPUT_IMAGE!r} must have 3 channels (RGB), got shape {shape}")
    count = int(np.prod(shape))
    parameters = tensor.get("parameters") or {}
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not isinstance(size, int) or size != count or len(binary) < size:
            raise InvalidOption(
                f"input {INPUT_IMAGE!r} declares binary_data_size {size!r}; shape {shape} needs {count} bytes "
                f"and {len(binary)} bytes follow the header"
            )
        return np.frombuffer(binary[:size], dtype=np.uint8).reshape(shape)
    data = tensor.get("data")
    if data is None:
        raise InvalidOption(f"input {INPUT_IMAGE!r} has neither 'data' nor parameters.binary_data_size")
    try:
        values = np.asarray(data, dtype=np.int64).ravel()
    except (TypeError, ValueError) as exc:
        raise InvalidOption(f"input {INPUT_IMAGE!r} data must be integers 0-255") from exc
    if values.size != count:
        raise InvalidOption(f"input {INPUT_IMAGE!r} has {values.size} values; shape {shape} needs {count}")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InvalidOption(f"input {INPUT_IMAGE!r} values must be within 0-255 for UINT8")
    return values.astype(np.uint8).reshape(shape)


def _requested_outputs(header: dict[str, Any], info: ModelInfo) -> tuple[list[tuple[str, bool]], bool]:
    parameters = header.get("parameters") or {}
    binary_out = bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    wanted = header.get("outputs")
    if wanted is None:
        return [(name, False) for name in info.output_names], binary_out
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
        raise InvalidOption("'outputs' must be a list of {'name': ...} objects")
    requested = []
    for output in wanted:
        name = output["name"]
        if name not in info.output_names:
            raise InvalidOption(f"unknown output {name!r}; model {info.name!r} has {info.output_names}")
        params = output.get("parameters") or {}
        if "classification" in params:
            raise InvalidOption("the classification extension is not supported")
        requested.append((name, bool(params.get("binary_data", False))))
    return requested, binary_out


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
