"""``DanetClient``: one front for both transports."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from client._errors import DanetClientError
from client._inputs import Image, ImageInput, Options, image_from, options_from
from client._types import ModelSummary, Segmentation
from common.contract import DEFAULT_HTTP_PORT

DEFAULT_URL = f"http://localhost:{DEFAULT_HTTP_PORT}"
DEFAULT_TIMEOUT_S = 120.0


class _Transport(Protocol):
    def segment(self, image: Image, options: Options) -> Segmentation: ...
    def list_models(self) -> list[ModelSummary]: ...
    def ready(self) -> bool: ...
    def close(self) -> None: ...


class DanetClient:
    """Segment images on a danet-serve server.

    Give either ``url`` (REST, e.g. ``"http://localhost:8000"``) or ``grpc`` (``"host:port"``); with
    neither, REST on localhost:8000. ``api_key`` is sent as ``Authorization: Bearer``; ``timeout`` is the
    per-request deadline in seconds. For gRPC over TLS pass ``tls=True`` (system roots) or
    ``root_certificates`` (PEM bytes). Thread-safe; use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        grpc: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        if url and grpc:
            raise DanetClientError(
                "give either url (REST) or grpc (host:port), not both", code="invalid_input"
            )
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise DanetClientError(
                f"expected a positive timeout in seconds, got {timeout!r}", code="invalid_input"
            )
        self._transport: _Transport
        if grpc:
            if ":" not in grpc or "/" in grpc:
                raise DanetClientError(f"expected grpc as HOST:PORT, got {grpc!r}", code="invalid_input")
            from client._grpc import GrpcTransport

            self._transport = GrpcTransport(
                grpc, api_key=api_key, timeout=timeout, tls=tls, root_certificates=root_certificates
            )
            self.address = grpc
            self.protocol = "grpc"
        else:
            address = url or DEFAULT_URL
            if not address.startswith(("http://", "https://")):
                raise DanetClientError(
                    f"expected url to start with http:// or https://, got {address!r}", code="invalid_input"
                )
            from client._rest import RestTransport

            self._transport = RestTransport(address, api_key=api_key, timeout=timeout)
            self.address = address
            self.protocol = "rest"
        self._closed = False

    def _live(self) -> _Transport:
        if self._closed:
            raise DanetClientError("this DanetClient is closed", code="closed")
        return self._transport

    def segment(
        self,
        image: ImageInput,
        *,
        format: str = "index",
        model: str | None = None,
        alpha: float | None = None,
        mode: str | None = None,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
        max_size: int | None = None,
        tta: str | None = None,
        base_size: int | Sequence[int] | None = None,
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
    ) -> Segmentation:
        """Segment ``image``: a file path, encoded image bytes, or a uint8 ``[H, W, 3]`` RGB array.

        ``format``: ``index`` (label PNG + ``labels()``), ``color``, ``overlay`` (blended with ``alpha``)
        or ``json`` (per-class statistics). ``mode`` ``whole``/``slide``, ``scales`` and ``flip`` as on
        the server (``flip=None``: the server's default); ``max_size`` caps the longest side used for
        inference. ``tta`` ``"official"``/``"mmseg"`` runs a published evaluation procedure instead, with
        ``base_size`` (N or (long, short)), ``crop_size`` and ``stride`` (N or (height, width)).
        """
        options = options_from(
            format=format,
            model=model,
            alpha=alpha,
            mode=mode,
            scales=scales,
            flip=flip,
            max_size=max_size,
            tta=tta,
            base_size=base_size,
            crop_size=crop_size,
            stride=stride,
        )
        return self._live().segment(image_from(image), options)

    def list_models(self) -> list[ModelSummary]:
        return self._live().list_models()

    def ready(self) -> bool:
        """True when the server answers and its models are warm; raises when nothing answers."""
        return self._live().ready()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()

    def __enter__(self) -> DanetClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DanetClient({self.protocol}={self.address!r})"
