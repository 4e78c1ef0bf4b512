"""``inference.GRPCInferenceService`` (KServe v2 / Open Inference Protocol) over the shared engine.

Tensors travel as ``raw_input_contents`` / ``raw_output_contents`` (little-endian, row-major), which is
what ``tritonclient.grpc`` sends and reads; typed ``contents`` are accepted for the UINT8 input too.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from protos.gen.inference import grpc_service_pb2 as pb
from protos.gen.inference import grpc_service_pb2_grpc as pb_grpc
from protos.gen.inference import model_config_pb2 as config_pb
from server import tracing
from server.engine import Engine, ModelInfo
from server.errors import InvalidOption, ModelNotFound
from server.grpc.deadlines import within_deadline
from server.grpc.errors import status_for, translate_errors, translate_stream_errors
from server.grpc.streaming import ordered_replies
from server.kserve import codec, shm
from server.settings import Settings

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, settings: Settings, engine: Engine, *, stream_window: int | None = None) -> None:
        self._settings = settings
        self._engine = engine
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
        return pb.ServerMetadataResponse(
            name=codec.SERVER_NAME, version=codec.SERVER_VERSION, extensions=list(codec.EXTENSIONS)
        )

    @translate_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        info = self._model(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=[v.version for v in self._engine.versions(info.name)],
            platform=codec.PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in info.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in info.outputs],
        )

    @translate_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        report = codec.model_statistics(self._engine, request.name, request.version)
        return json_format.ParseDict(report, pb.ModelStatisticsResponse())

    @translate_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        instance = self._engine.instance(self._name(request.name), request.version or None)
        config = json_format.ParseDict(
            codec.model_config(instance), config_pb.ModelConfig(), ignore_unknown_fields=True
        )
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
        info = self._model(request.model_name, request.model_version)
        observer = self._engine.observer
        with observer.request(f"{SERVICE_NAME}/ModelInfer", tracing.grpc_carrier(context), info):
            with observer.step("decode", info, **{tracing.BYTES: request.ByteSize()}):
                batch = self._input_batch(request, info)
                names = codec.requested_outputs(info, [o.name for o in request.outputs])
                regions = self._engine.shared_memory
                requested = [
                    codec.Requested(o.name, shm=regions.reference(_values(o.parameters), o.name))
                    for o in request.outputs
                ] or [codec.Requested(name) for name in names]
                codec.check_reply_size(info, batch.shape, requested, self._settings.max_reply_bytes)
            info, results = await within_deadline(
                context,
                self._engine.infer_versioned(
                    info.name, batch, outputs=names, version=request.model_version or None
                ),
            )
            with observer.step("encode", info) as step:
                response = await self._engine.codecs.run(_response, request, info, requested, results)
                step.set(tracing.BYTES, response.ByteSize())
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

    # --- the system shared memory extension -------------------------------------------------------
    @translate_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        regions = self._engine.shared_memory.status(request.name)
        return pb.SystemSharedMemoryStatusResponse(regions={r["name"]: status(**r) for r in regions})

    @translate_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._engine.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @translate_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._engine.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @staticmethod
    def _name(name: str) -> str:
        if not name:
            raise InvalidOption("model name is required")
        return name

    def _model(self, name: str, version: str) -> ModelInfo:
        return self._engine.get_model(self._name(name), version or None)

    def _input_batch(self, request: pb.ModelInferRequest, info: ModelInfo) -> np.ndarray:
        """The ``image`` tensor as uint8 [N, H, W, 3], validated against what the request declares."""
        if len(request.inputs) != 1:
            got = [t.name for t in request.inputs]
            raise InvalidOption(f"expected exactly one input named {codec.INPUT_IMAGE!r}, got {got}")
        tensor = request.inputs[0]
        shape = codec.image_shape(tensor.name, tensor.datatype, list(tensor.shape), info, self._engine.limits)
        ref = self._engine.shared_memory.reference(_values(tensor.parameters), tensor.name)
        if ref is not None:
            if request.raw_input_contents or tensor.HasField("contents"):
                raise InvalidOption(f"input {codec.INPUT_IMAGE!r} is in shared memory: send no data with it")
            return codec.image_from_bytes(shape, ref.read())
        if request.raw_input_contents:
            if len(request.raw_input_contents) != len(request.inputs):
                raise InvalidOption(
                    f"raw_input_contents has {len(request.raw_input_contents)} entries for {len(request.inputs)} input(s)"
                )
            return codec.image_from_bytes(shape, request.raw_input_contents[0])
        return codec.image_from_values(shape, np.asarray(tensor.contents.uint_contents, dtype=np.uint32))


def _response(
    request: pb.ModelInferRequest,
    info: ModelInfo,
    requested: list[codec.Requested],
    results: dict[str, np.ndarray],
) -> pb.ModelInferResponse:
    """Raw little-endian outputs, in the order asked (runs in a worker thread: copies can be large). An output
    written to shared memory keeps its place with empty raw contents, as Triton does."""
    response = pb.ModelInferResponse(model_name=info.name, model_version=info.version, id=request.id)
    for out in requested:
        array = np.asarray(results[out.name])
        output = response.outputs.add(
            name=out.name, datatype=codec.datatype_of(array), shape=list(array.shape)
        )
        raw = codec.little_endian(array)
        if out.shm is None:
            response.raw_output_contents.append(raw)
            continue
        out.shm.write(raw)
        output.parameters[shm.REGION].string_param = out.shm.region
        output.parameters[shm.BYTE_SIZE].int64_param = len(raw)
        response.raw_output_contents.append(b"")
    return response


def _values(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values
