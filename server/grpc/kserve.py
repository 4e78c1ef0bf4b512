"""``inference.GRPCInferenceService`` (KServe v2 / Open Inference Protocol) over the shared engine.

Tensors travel as ``raw_input_contents`` / ``raw_output_contents`` (little-endian, row-major), which is
what ``tritonclient.grpc`` sends and reads; typed ``contents`` are accepted for the UINT8 input too.
"""

from __future__ import annotations

import logging
import math
from importlib import metadata as importlib_metadata
from typing import Any

import grpc
import numpy as np

from common.contract import INPUT_IMAGE
from protos.gen.inference import grpc_service_pb2 as pb
from protos.gen.inference import grpc_service_pb2_grpc as pb_grpc
from protos.gen.inference import model_config_pb2 as config_pb
from server.engine import Engine, ModelInfo
from server.errors import InvalidOption, ModelNotFound, NotReady
from server.grpc.deadlines import within_deadline
from server.grpc.errors import status_for, translate_errors, translate_stream_errors
from server.grpc.streaming import ordered_replies
from server.settings import Settings

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "danet-serve"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("model_configuration", "model_repository")

# numpy dtype <-> KServe v2 datatype string
_DATATYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


def _server_version() -> str:
    try:
        return importlib_metadata.version("danet-serve")
    except importlib_metadata.PackageNotFoundError:
        return "0.0.0"


def datatype_of(array: np.ndarray) -> str:
    try:
        return _DATATYPES[np.dtype(array.dtype).newbyteorder("=")]
    except KeyError:
        raise InvalidOption(f"cannot return tensors of dtype {array.dtype}") from None


def raw_bytes(array: np.ndarray) -> bytes:
    """Little-endian row-major bytes, as the protocol requires for raw contents."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _config_type(datatype: str) -> str:
    """KServe datatype string -> model-config enum name ("UINT8" -> "TYPE_UINT8")."""
    name = f"TYPE_{datatype}"
    return name if name in config_pb.DataType.keys() else "TYPE_INVALID"  # noqa: SIM118 (enum wrapper)


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, settings: Settings, engine: Engine, *, stream_window: int | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._version = _server_version()
        self._window = stream_window or max(2, min(int(settings.max_batch_size), 16))

    # --- health and metadata ----------------------------------------------------------------------
    @translate_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @translate_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._engine.ready)

    @translate_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        if not self._engine.ready:
            return pb.ModelReadyResponse(ready=False)
        try:
            self._model(request.name, request.version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @translate_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=list(EXTENSIONS))

    @translate_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        info = self._model(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=[v.version for v in self._engine.versions(info.name)],
            platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in info.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in info.outputs],
        )

    @translate_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        info = self._model(request.name, request.version)
        max_batch = int(self._settings.max_batch_size)
        config = config_pb.ModelConfig(
            name=info.name,
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=max_batch,
            input=[
                config_pb.ModelInput(
                    name=t.name,
                    data_type=_config_type(t.datatype),
                    format=config_pb.ModelInput.FORMAT_NHWC
                    if t.name == INPUT_IMAGE
                    else config_pb.ModelInput.FORMAT_NONE,
                    dims=list(t.shape[1:]),
                )
                for t in info.inputs
            ],
            output=[
                config_pb.ModelOutput(name=t.name, data_type=_config_type(t.datatype), dims=list(t.shape[1:]))
                for t in info.outputs
            ],
        )
        if max_batch > 1 and self._settings.batching != "off":
            config.dynamic_batching.max_queue_delay_microseconds = int(self._settings.batch_delay_ms * 1000)
        return pb.ModelConfigResponse(config=config)

    # --- inference --------------------------------------------------------------------------------
    @translate_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    @translate_stream_errors
    async def ModelStreamInfer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        async def one(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                return pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except Exception as exc:  # per-request failure: reported in the stream, which goes on
                _, message = status_for(exc)
                return pb.ModelStreamInferResponse(
                    error_message=message, infer_response=pb.ModelInferResponse(id=request.id)
                )

        async for reply in ordered_replies(request_iterator, one, window=self._window):
            yield reply

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if not self._engine.ready:
            raise NotReady("the server is not ready (models loading or shutting down)")
        info = self._model(request.model_name, request.model_version)
        batch = self._input_batch(request)
        names = [o.name for o in request.outputs] or info.output_names
        if len(set(names)) != len(names):
            raise InvalidOption(f"outputs requested more than once: {names}")
        info, results = await within_deadline(
            context,
            self._engine.infer_versioned(
                info.name, batch, outputs=names, version=request.model_version or None
            ),
        )
        response = pb.ModelInferResponse(model_name=info.name, model_version=info.version, id=request.id)
        for name in names:
            array = np.asarray(results[name])
            response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            response.raw_output_contents.append(raw_bytes(array))
        return response

    # --- the repository extension -----------------------------------------------------------------
    @translate_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        rows = self._engine.repository.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
        )

    @translate_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self._engine.repository.load_model(self._name(request.model_name), list(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @translate_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self._engine.repository.unload_model(self._name(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    @staticmethod
    def _name(name: str) -> str:
        if not name:
            raise InvalidOption("model name is required")
        return name

    def _model(self, name: str, version: str) -> ModelInfo:
        return self._engine.get_model(self._name(name), version or None)

    def _input_batch(self, request: pb.ModelInferRequest) -> np.ndarray:
        """The ``image`` tensor as uint8 [N, H, W, 3], validated against what the request declares."""
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT_IMAGE:
            got = [t.name for t in request.inputs]
            raise InvalidOption(f"expected exactly one input named {INPUT_IMAGE!r}, got {got}")
        tensor = request.inputs[0]
        if tensor.datatype != "UINT8":
            raise InvalidOption(
                f"input {INPUT_IMAGE!r} must be UINT8, got {tensor.datatype or 'no datatype'}"
            )
        shape = [int(d) for d in tensor.shape]
        if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
            raise InvalidOption(f"input {INPUT_IMAGE!r} must have shape [N, H, W, 3], got {shape}")
        count = math.prod(shape)
        if request.raw_input_contents:
            if len(request.raw_input_contents) != len(request.inputs):
                raise InvalidOption(
                    f"raw_input_contents has {len(request.raw_input_contents)} entries for {len(request.inputs)} input(s)"
                )
            data = request.raw_input_contents[0]
            if len(data) != count:
                raise InvalidOption(
                    f"input {INPUT_IMAGE!r} of shape {shape} needs {count} bytes, got {len(data)}"
                )
            return np.frombuffer(data, dtype=np.uint8).reshape(shape)
        values = tensor.contents.uint_contents
        if len(values) != count:
            raise InvalidOption(
                f"input {INPUT_IMAGE!r} of shape {shape} needs {count} values in raw_input_contents or "
                f"contents.uint_contents, got {len(values)}"
            )
        array = np.asarray(values, dtype=np.uint32)
        if int(array.max(initial=0)) > 255:
            raise InvalidOption(f"input {INPUT_IMAGE!r} is UINT8 but contents hold values above 255")
        return array.astype(np.uint8).reshape(shape)
