"""gRPC through Ray Serve's gRPC proxy: ``danet.segmentation.v1.SegmentationService`` and the KServe v2
``inference.GRPCInferenceService``, served by the same servicer classes as ``danet-serve``'s gRPC port.

Ray's proxy (``grpc_options.grpc_servicer_functions`` in the Serve config) accepts every method of the
registered services and calls the replica method of the same name with the request message (or the stream
of them) and a ``grpc_context``. ``GrpcForwarding`` has one such method per RPC of both services (their names
do not overlap), each forwarding to ``SegmentationServicer`` / ``KServeServicer`` through ``RayContext``,
the part of ``grpc.aio.ServicerContext`` the servicers use. So errors keep their status codes and messages.

What differs from danet-serve's own gRPC port: health is Ray's (``ray.serve.RayServeAPIService/Healthz``,
not ``grpc.health.v1``); a client deadline is not passed on (Serve's ``grpc_options.request_timeout_s``
bounds a call instead); the API key is checked here, per call, since the proxy has no interceptors.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from protos.gen.danet.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from protos.gen.inference import grpc_service_pb2, grpc_service_pb2_grpc
from server.grpc.auth import UNAUTHENTICATED_MESSAGE, key_matches

if TYPE_CHECKING:  # the Serve proxy imports this module too: keep it free of the engine
    from server.grpc.kserve import KServeServicer
    from server.grpc.segmentation import SegmentationServicer

GENERATED_PACKAGE = "protos.gen."


def register_message_modules() -> None:
    """Make the generated messages picklable: Serve pickles requests and replies between proxy and replica.

    protoc names each message's module after its .proto path (``danet.segmentation.v1.segmentation_pb2``,
    ``inference.grpc_service_pb2``) while this package imports them as ``protos.gen.<that path>``, so pickle
    cannot find the class by its ``__module__``. The short names become aliases of the loaded modules.
    """
    for name, module in list(sys.modules.items()):
        if name.startswith(GENERATED_PACKAGE):
            sys.modules.setdefault(name.removeprefix(GENERATED_PACKAGE), module)


def add_segmentation_service(servicer: Any, server: Any) -> None:
    """For the Serve config's ``grpc_options.grpc_servicer_functions`` (run in each proxy)."""
    register_message_modules()
    segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(servicer, server)


def add_kserve_service(servicer: Any, server: Any) -> None:
    """For the Serve config's ``grpc_options.grpc_servicer_functions`` (run in each proxy)."""
    register_message_modules()
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


SERVICER_FUNCTIONS = (f"{__name__}.add_segmentation_service", f"{__name__}.add_kserve_service")
_SERVICES = {
    "_segmentation": segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"],
    "_kserve": grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
}


class RayContext:
    """``abort`` and ``time_remaining`` of ``grpc.aio.ServicerContext`` over Ray's ``RayServegRPCContext``."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        # Ray sends the code and details set on its context when the method then raises.
        self._context.set_code(code)
        self._context.set_details(details)
        raise grpc.aio.AbortError(details)

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()


class GrpcForwarding:
    """Mixin for the Serve deployment: set ``_segmentation``, ``_kserve`` and ``_api_key`` in ``__init__``."""

    _segmentation: SegmentationServicer
    _kserve: KServeServicer
    _api_key: bytes | None

    async def _context(self, grpc_context: Any) -> RayContext:
        context = RayContext(grpc_context)
        if self._api_key is not None and not key_matches(self._api_key, context.invocation_metadata()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        return context


def _forwarder(servicer: str, name: str, server_streaming: bool) -> Callable[..., Any]:
    # Ray passes the context by keyword only to methods with a parameter named ``grpc_context``.
    if server_streaming:

        async def stream(self: GrpcForwarding, request: Any, grpc_context: Any) -> AsyncIterator[Any]:
            context = await self._context(grpc_context)
            async for reply in getattr(getattr(self, servicer), name)(request, context):
                yield reply

        method: Callable[..., Any] = stream
    else:

        async def unary(self: GrpcForwarding, request: Any, grpc_context: Any) -> Any:
            context = await self._context(grpc_context)
            return await getattr(getattr(self, servicer), name)(request, context)

        method = unary
    method.__name__ = method.__qualname__ = name
    return method


for _servicer, _service in _SERVICES.items():
    for _method in _service.methods:
        setattr(GrpcForwarding, _method.name, _forwarder(_servicer, _method.name, _method.server_streaming))
