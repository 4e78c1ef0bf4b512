"""One KServe v2 / Open Inference Protocol codec for REST and gRPC.

Tensors in (the ``image`` input, from raw bytes or typed values), tensors out (raw little-endian bytes or
JSON lists), the datatype table (``server.model.ORT_TYPES``), the server's identity and the Triton-style
model configuration. Every check runs before any work starts: shapes, values and datatypes are strict
(a malformed request is a 400 / INVALID_ARGUMENT, never a 500), the request's pixels are bounded like any
other request's, and the reply's size is known from the output shapes before inference runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common.contract import INPUT_IMAGE
from server import __version__
from server.errors import InvalidOption, PayloadTooLarge
from server.instance import ModelInstance
from server.kserve.shm import ShmRef
from server.model import ORT_TYPES, ModelInfo
from server.segmentation.cost import Limits

if TYPE_CHECKING:
    from server.engine import Engine

SERVER_NAME = "danet-serve"
SERVER_VERSION = __version__
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
#: extensions both protocols implement; REST adds ``binary_tensor_data``
EXTENSIONS = ["model_configuration", "model_repository", "statistics", "system_shared_memory"]
MAX_BATCH = 64  # images in one KServe request
JSON_CHUNK = 16384  # values encoded per GIL hold in JSON replies
#: bytes one element takes at most in a JSON reply (digits, sign, exponent, separator)
_JSON_BYTES = {"BOOL": 6, "UINT8": 4, "INT8": 5, "UINT16": 6, "INT16": 7, "FP16": 24, "FP32": 24, "FP64": 25}
_DTYPES = {v2: np.dtype(name) for v2, name in ORT_TYPES.values()}
_DATATYPES = {dtype: v2 for v2, dtype in _DTYPES.items()}


def little_endian(array: np.ndarray) -> bytes:
    """Row-major little-endian bytes, as the protocol requires for raw contents."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def datatype_of(array: np.ndarray) -> str:
    try:
        return _DATATYPES[np.dtype(array.dtype).newbyteorder("=")]
    except KeyError:
        raise InvalidOption(f"cannot return tensors of dtype {array.dtype}") from None


def config_type(datatype: str) -> str:
    """KServe datatype string -> Triton model-config enum name ("UINT8" -> "TYPE_UINT8")."""
    return f"TYPE_{datatype}" if datatype in _DTYPES else "TYPE_INVALID"


# --- the image input --------------------------------------------------------------------------------
def image_shape(name: Any, datatype: Any, shape: Any, info: ModelInfo, limits: Limits) -> tuple[int, ...]:
    """Check the declared input against the contract and the server's limits; the shape as ints."""
    if name != INPUT_IMAGE:
        raise InvalidOption(
            f"unknown input {name!r}; model {info.name!r} takes exactly one input {INPUT_IMAGE!r}"
        )
    if datatype != "UINT8":
        raise InvalidOption(f"input {INPUT_IMAGE!r} must be UINT8, got {datatype or 'no datatype'!r}")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise InvalidOption(f"input {INPUT_IMAGE!r} needs a shape [N, H, W, 3] of integers, got {shape!r}")
    batch, height, width, channels = (int(d) for d in shape)
    if channels != 3:
        raise InvalidOption(
            f"input {INPUT_IMAGE!r} must have 3 channels (RGB): shape [N, H, W, 3], got {list(shape)}"
        )
    if min(batch, height, width) < 1:
        raise InvalidOption(
            f"input {INPUT_IMAGE!r} must have shape [N, H, W, 3] with N, H, W >= 1, got {list(shape)}"
        )
    if batch > MAX_BATCH:
        raise PayloadTooLarge(
            f"input {INPUT_IMAGE!r} holds {batch} images; the limit is {MAX_BATCH} per request"
        )
    side = limits.max_inference_size
    if side is not None and max(height, width) > side:
        raise PayloadTooLarge(
            f"input {INPUT_IMAGE!r} is {height}x{width}; the server's limit is {side} pixels a side "
            "(max_inference_size): KServe inference runs the graph at the size sent, resize before sending"
        )
    if height * width > limits.max_pixels:
        raise PayloadTooLarge(
            f"input {INPUT_IMAGE!r} images are {height * width} pixels; the limit is {limits.max_pixels} (max_pixels)"
        )
    if batch * height * width > limits.max_request_pixels:
        raise PayloadTooLarge(
            f"input {INPUT_IMAGE!r} holds {batch * height * width} pixels; the limit is "
            f"{limits.max_request_pixels} per request (max_request_pixels)"
        )
    return batch, height, width, channels


def image_from_bytes(shape: Sequence[int], data: bytes | memoryview) -> np.ndarray:
    count = math.prod(shape)
    if len(data) != count:
        raise InvalidOption(
            f"input {INPUT_IMAGE!r} of shape {list(shape)} needs {count} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def image_from_values(shape: Sequence[int], values: Any) -> np.ndarray:
    """Typed values (a JSON list, flat or nested as the shape, or gRPC ``uint_contents``) -> uint8.

    Integers 0-255 only: floats, booleans, strings and values out of range are refused, never truncated."""
    count = math.prod(shape)
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidOption(f"input {INPUT_IMAGE!r} data must be a list of integers 0-255: {exc}") from None
    if array.dtype.kind not in "iu":
        kind = {"f": "floating-point", "b": "boolean", "U": "string", "O": "mixed or out-of-range"}
        raise InvalidOption(
            f"input {INPUT_IMAGE!r} is UINT8: data must be integers 0-255, got "
            f"{kind.get(array.dtype.kind, array.dtype.name)} values"
        )
    if array.size != count:
        raise InvalidOption(
            f"input {INPUT_IMAGE!r} has {array.size} values; shape {list(shape)} needs {count}"
        )
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise InvalidOption(f"input {INPUT_IMAGE!r} is UINT8: values must be within 0-255")
    return array.astype(np.uint8).reshape(shape)


# --- outputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requested:
    name: str
    binary: bool = True  # raw bytes (REST binary extension, gRPC raw contents) or a JSON list
    shm: ShmRef | None = None  # written to a shared memory region instead of the reply


def requested_outputs(info: ModelInfo, names: Sequence[str]) -> list[str]:
    """The outputs asked for (none named = every output), each known and named once."""
    wanted = list(names) or info.output_names
    unknown = [n for n in wanted if n not in info.output_names]
    if unknown:
        raise InvalidOption(f"unknown output(s) {unknown}; model {info.name!r} has {info.output_names}")
    if len(set(wanted)) != len(wanted):
        raise InvalidOption(f"outputs requested more than once: {wanted}")
    return wanted


def check_reply_size(
    info: ModelInfo,
    shape: Sequence[int],
    outputs: Sequence[Requested],
    limit: int,
    json_limit: int | None = None,
) -> None:
    """Refuse, before inference, a reply larger than ``limit`` bytes, or JSON tensors larger than
    ``json_limit`` (from the output shapes), or an output that does not fit the shared memory it is to be
    written to."""
    batch, height, width = shape[0], shape[1], shape[2]
    total = json_total = 0
    sizes = []
    for out in outputs:
        spec = next(t for t in info.outputs if t.name == out.name)
        elements = batch * height * width * (info.num_classes if len(spec.shape) == 4 else 1)
        if out.shm is not None:
            need = elements * _DTYPES[spec.datatype].itemsize
            if need > out.shm.byte_size:
                raise InvalidOption(
                    f"output {out.name!r} takes {need} bytes; shared memory region {out.shm.region!r} is given "
                    f"{out.shm.byte_size} (shared_memory_byte_size)"
                )
            continue
        per = _JSON_BYTES.get(spec.datatype, 24) if not out.binary else _DTYPES[spec.datatype].itemsize
        sizes.append(f"{out.name} {'JSON' if not out.binary else 'binary'} ~{elements * per / 2**20:.0f} MiB")
        total += elements * per
        json_total += 0 if out.binary else elements * per
    if json_limit is not None and json_total > json_limit:
        raise PayloadTooLarge(
            f"the reply's JSON tensors would be about {json_total / 2**20:.0f} MiB ({', '.join(sizes)}); the "
            f"server's limit is {json_limit / 2**20:.0f} MiB (max_json_reply_bytes): ask for binary outputs "
            "(the binary tensor data extension: parameters.binary_data=true, tritonclient's default) and only "
            "the outputs you need (`outputs`, e.g. labels)"
        )
    if total > limit:
        binary = all(out.binary for out in outputs)
        hint = (
            "ask only for the outputs you need (`outputs`, e.g. labels)"
            if binary
            else "ask for binary outputs (the binary tensor data extension: parameters.binary_data=true, "
            "tritonclient's default) and only the outputs you need (`outputs`, e.g. labels)"
        )
        raise PayloadTooLarge(
            f"the reply would be about {total / 2**20:.0f} MiB ({', '.join(sizes)}); the server's limit is "
            f"{limit / 2**20:.0f} MiB (max_reply_bytes): {hint}"
        )


def json_text(array: np.ndarray, chunk: int = JSON_CHUNK) -> str:
    """A tensor as the flat JSON list the protocol's ``data`` holds (CPU work: call off the event loop).

    Encoded a chunk at a time: ``tolist`` and ``json.dumps`` hold the GIL for their whole call, so one call
    on millions of values would stall the event loop (health checks included) for seconds; between chunks
    the loop gets its turn."""
    flat = array.ravel()
    parts = []
    for start in range(0, flat.size, chunk):
        parts.append(json.dumps(flat[start : start + chunk].tolist())[1:-1])
        time.sleep(0)  # hand the GIL over
    return "[" + ",".join(p for p in parts if p) + "]"


# --- model configuration ---------------------------------------------------------------------------
def model_config(instance: ModelInstance) -> dict[str, Any]:
    """Triton's model configuration (JSON form; gRPC parses it into its ModelConfig message)."""
    info, batching = instance.info, instance.batching
    config: dict[str, Any] = {
        "name": info.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        # dims omit the batch dimension when max_batch_size > 0, as Triton's
        "max_batch_size": batching.max_batch_size,
        "input": [
            {
                "name": t.name,
                "data_type": config_type(t.datatype),
                "format": "FORMAT_NHWC" if t.name == INPUT_IMAGE else "FORMAT_NONE",
                "dims": list(t.shape[1:]),
            }
            for t in info.inputs
        ],
        "output": [
            {"name": t.name, "data_type": config_type(t.datatype), "dims": list(t.shape[1:])}
            for t in info.outputs
        ],
        "instance_group": [
            {"count": batching.instances, "kind": "KIND_GPU" if instance.handle.on_gpu else "KIND_CPU"}
        ],
        "parameters": {"classes": {"string_value": json.dumps(info.classes)}},
    }
    if batching.max_batch_size > 1:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
            "preferred_batch_size": list(batching.preferred_batch_sizes),
        }
    return config


# --- statistics ------------------------------------------------------------------------------------
def model_statistics(engine: Engine, name: str, version: str) -> dict[str, Any]:
    """Triton's statistics for one version, every version of a model (no version) or every model (no
    name); an unknown model or version is a 404 / NOT_FOUND."""
    if not name:
        pairs = [
            (n, i.info.version) for n, versions in engine.repository.snapshot().items() for i in versions
        ]
    elif version:
        pairs = [(name, engine.get_model(name, version).version)]
    else:
        pairs = [(name, engine.get_model(name).version)]
        pairs = [(name, info.version) for info in engine.versions(name)] or pairs
    return engine.observer.statistics.report(pairs)
