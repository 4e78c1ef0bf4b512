"""The image part of a ``multipart/form-data`` upload, parsed as it streams in, kept in memory.

Starlette's ``request.form()`` spools every file part to a ``SpooledTemporaryFile`` that rolls over to disk
past 1 MiB, and each write after that is a thread-pool round trip: measured 24.7 ms to parse a 3.8 MB PNG
upload (a 1024x2048 street scene), against 0.3 ms for a 0.5 MB one. The body is already capped while it
streams (``ServiceMiddleware``) and the raw-body path holds it in memory anyway, so here the one part we
want goes straight into a ``bytearray`` (``python-multipart``'s parser, the one Starlette uses): the
3.8 MB upload then parses in 6.0 ms (0.5 MB: 0.26 ms), with no thread hop and no temporary file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from server.errors import InvalidImage, InvalidOption, PayloadTooLarge

#: Multipart field names that carry the image: ``image`` (ours) and ``file`` (curl/requests/browser habit).
UPLOAD_FIELDS = ("image", "file")
MAX_PARTS = 16


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    is_file: bool = False
    data: bytearray | None = None  # only for the image part


class _Collector:
    """python-multipart callbacks: headers of every part, the bytes of the (single) image part."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[_Part] = []
        self._field = bytearray()
        self._value = bytearray()

    @property
    def current(self) -> _Part:
        return self.parts[-1]

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise InvalidOption(f"multipart body has more than {MAX_PARTS} parts")
        self.parts.append(_Part())

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self.current.headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        part = self.current
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("latin-1")
        part.is_file = b"filename" in options
        if part.name in UPLOAD_FIELDS:
            if any(p.data is not None for p in self.parts[:-1]):
                raise InvalidOption(
                    "multipart body carries more than one image (fields 'image' / 'file'); send one"
                )
            part.data = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        target = self.current.data
        if target is None:
            return
        target += data[start:end]
        if len(target) > self.max_bytes:
            raise PayloadTooLarge(f"image exceeds the limit of {self.max_bytes} bytes")

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
        }


async def read_multipart_image(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and declared media type of the file field ``image`` (or ``file``) of a multipart body.

    Raises InvalidImage (400) for a body that is not a well-formed multipart form, InvalidOption (422) for
    a form without exactly one image field, PayloadTooLarge (413) for an image part over ``max_bytes``.
    """
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidImage("multipart/form-data body without a boundary parameter")
    collector = _Collector(max_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidImage(f"the request body is not a well-formed multipart form: {exc}") from exc
    if parser.state.name != "END":
        raise InvalidImage("the multipart body ends before its closing boundary")
    image = next((p for p in collector.parts if p.data is not None), None)
    if image is None or not image.is_file:
        raise InvalidOption("multipart body has no file field named 'image' (or 'file')")
    declared = image.headers.get(b"content-type")
    return bytes(image.data or b""), declared.decode("latin-1") if declared is not None else None
