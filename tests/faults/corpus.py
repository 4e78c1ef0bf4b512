"""The hostile / odd input corpus, generated in memory (nothing is downloaded).

Every case says what a correct server does with it:

* ``OK``: a segmentation map of ``expect_size`` (width, height) comes back;
* ``REJECT``: a clean 4xx (status in ``statuses``) with the JSON error body;
* ``EITHER``: one of the two (formats or oddities a server may reasonably refuse), never a 5xx.

Most files are made with Pillow; the malicious PNGs (huge declared size, decompression bomb, zTXt
bomb) are assembled chunk by chunk with valid CRCs so that they get past signature/CRC checks and
test the server's limits rather than the decoder's pickiness.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from PIL import Image


class Expect(Enum):
    OK = "ok"
    REJECT = "reject"
    EITHER = "either"


CLIENT_ERRORS = frozenset({400, 413, 415, 422})


@dataclass(frozen=True)
class FaultCase:
    """One request to ``POST /segment``.

    ``send`` is ``"multipart"`` (``field_name`` holds the file), ``"raw"`` (the bytes are the body),
    ``"chunked"`` (the raw body streamed without a Content-Length), ``"form"`` (an urlencoded form),
    ``"multipart-twice"`` (two file fields) or ``"multipart-broken"`` (the closing boundary missing).
    ``params`` are extra query parameters.
    """

    name: str
    data: bytes
    expect: Expect
    content_type: str | None = "application/octet-stream"
    send: str = "multipart"
    field_name: str = "image"
    filename: str = "upload"
    expect_size: tuple[int, int] | None = None  # (width, height) of the answer when it is a map
    statuses: frozenset[int] = CLIENT_ERRORS
    params: dict[str, str] = field(default_factory=dict)
    reference: np.ndarray | None = field(
        default=None, compare=False, repr=False
    )  # exact RGB the server must see
    note: str = ""


# --- building blocks --------------------------------------------------------------------------------


def pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB test picture (gradients + blocks + noise), uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack(
        [
            (xx * 255 // max(width - 1, 1)),
            (yy * 255 // max(height - 1, 1)),
            ((xx // 8 + yy // 8) % 2) * 200,
        ],
        axis=-1,
    ).astype(np.int16)
    img += rng.integers(-20, 21, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk with its length and a valid CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_ihdr(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace))


def raw_png(width: int, height: int, rows: bytes, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG from already-filtered scanlines (each row starts with its filter byte)."""
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height, bit_depth, colour_type)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring ``width`` x ``height`` RGB pixels, with one tiny IDAT."""
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_bomb(width: int, height: int) -> bytes:
    """A decompression bomb: a 1-bit greyscale PNG of ``width`` x ``height`` all-zero pixels.

    The IDAT really decodes to the full image (every scanline present), so only a pixel cap
    applied *before* decoding saves the server; the file itself is a few hundred KiB.
    """
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    idat = b"".join(parts)
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height, bit_depth=1, colour_type=0)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_rgb16(width: int, height: int) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, which Pillow cannot write itself."""
    img = pattern(width, height).astype(np.uint16) * 257
    rows = b"".join(b"\x00" + img[y].astype(">u2").tobytes() for y in range(height))
    return raw_png(width, height, rows, bit_depth=16, colour_type=2)


def png_with_ztxt_bomb(base: bytes, inflated_size: int) -> bytes:
    """Insert a zTXt chunk whose text inflates to ``inflated_size`` bytes (a metadata bomb)."""
    payload = b"Comment\x00\x00" + zlib.compress(b"A" * inflated_size, 9)
    ihdr_end = len(PNG_SIGNATURE) + 25
    return base[:ihdr_end] + png_chunk(b"zTXt", payload) + base[ihdr_end:]


def jpeg_with_exif(image: Image.Image, exif: Image.Exif, **params: object) -> bytes:
    return save(image, "JPEG", exif=exif.tobytes(), quality=90, **params)


def jpeg_claiming(width: int, height: int) -> bytes:
    """SOI + a baseline SOF0 declaring ``width`` x ``height`` 3-component pixels, then EOI, no scan data."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame declare ``width`` x ``height`` (data: one pixel)."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring ``width`` x ``height`` with (almost) no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = info + b"\x00" * 16
    return b"BM" + struct.pack("<IHHI", 14 + len(body), 0, 0, 54) + body


def multipart_body(fields: list[tuple[str, str | None, bytes, str | None]], boundary: str) -> bytes:
    """Hand-made multipart/form-data: (name, filename, data, content type) per part."""
    out = io.BytesIO()
    for name, filename, data, ctype in fields:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if ctype:
            out.write(f"Content-Type: {ctype}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


# --- the corpus -------------------------------------------------------------------------------------


def _odd_valid_cases() -> list[FaultCase]:
    """Legal images in unusual shapes, modes and formats: each must give a map of the right size."""
    rgb = pattern(48, 32)
    base = Image.fromarray(rgb)
    cases: list[FaultCase] = []

    def ok(
        name: str,
        data: bytes,
        size: tuple[int, int],
        ctype: str,
        *,
        exact: np.ndarray | None = None,
        **kw: object,
    ) -> None:
        cases.append(
            FaultCase(name, data, Expect.OK, content_type=ctype, expect_size=size, reference=exact, **kw)
        )  # type: ignore[arg-type]

    def either(name: str, data: bytes, size: tuple[int, int], ctype: str, note: str) -> None:
        cases.append(FaultCase(name, data, Expect.EITHER, content_type=ctype, expect_size=size, note=note))

    ok("png-rgb", save(base, "PNG"), (48, 32), "image/png", exact=rgb)
    ok("png-rgb-raw-body", save(base, "PNG"), (48, 32), "image/png", exact=rgb, send="raw")
    ok("png-grey-L", save(base.convert("L"), "PNG"), (48, 32), "image/png")
    ok("png-LA", save(base.convert("LA"), "PNG"), (48, 32), "image/png")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray((pattern(48, 32)[..., 0] > 100).astype(np.uint8) * 255))
    ok("png-rgba-transparent", save(rgba, "PNG"), (48, 32), "image/png")
    ok("png-palette", save(base.quantize(16), "PNG"), (48, 32), "image/png")
    pal_t = base.quantize(8)
    ok("png-palette-trns", save(pal_t, "PNG", transparency=0), (48, 32), "image/png")
    ok("png-1bit", save(base.convert("1"), "PNG"), (48, 32), "image/png")
    grey16 = pattern(48, 32)[..., 0].astype(np.uint16) * 257
    grey16_rows = b"".join(b"\x00" + grey16[y].astype(">u2").tobytes() for y in range(32))
    ok("png-grey-16bit", raw_png(48, 32, grey16_rows, bit_depth=16, colour_type=0), (48, 32), "image/png")
    ok("png-rgb-16bit", png_rgb16(48, 32), (48, 32), "image/png")
    ok("png-1x1", save(Image.fromarray(pattern(1, 1)), "PNG"), (1, 1), "image/png")
    ok("png-1xN", save(Image.fromarray(pattern(1, 97)), "PNG"), (1, 97), "image/png")
    ok("png-Nx1", save(Image.fromarray(pattern(97, 1)), "PNG"), (97, 1), "image/png")
    ok("png-7x5-odd", save(Image.fromarray(pattern(7, 5)), "PNG"), (7, 5), "image/png")
    ok("png-thin-1000x3", save(Image.fromarray(pattern(1000, 3)), "PNG"), (1000, 3), "image/png")
    ok(
        "png-prime-61x37",
        save(Image.fromarray(pattern(61, 37)), "PNG"),
        (61, 37),
        "image/png",
        exact=pattern(61, 37),
    )
    ok("jpeg-baseline", save(base, "JPEG", quality=90), (48, 32), "image/jpeg")
    ok("jpeg-progressive", save(base, "JPEG", quality=85, progressive=True), (48, 32), "image/jpeg")
    ok("jpeg-grey", save(base.convert("L"), "JPEG"), (48, 32), "image/jpeg")
    ok("jpeg-cmyk", save(base.convert("CMYK"), "JPEG"), (48, 32), "image/jpeg")
    ok("jpeg-subsampling-444", save(base, "JPEG", subsampling=0), (48, 32), "image/jpeg")
    for orientation, size in ((3, (48, 32)), (6, (32, 48)), (8, (32, 48)), (5, (32, 48))):
        exif = Image.Exif()
        exif[0x0112] = orientation
        ok(f"jpeg-exif-orientation-{orientation}", jpeg_with_exif(base, exif), size, "image/jpeg")
    big_exif = Image.Exif()
    big_exif[0x010E] = "x" * 60_000  # ImageDescription: the largest APP1 a JPEG allows is 64 KiB
    ok("jpeg-huge-exif", jpeg_with_exif(base, big_exif), (48, 32), "image/jpeg")
    bogus_exif = Image.Exif()
    bogus_exif[0x0112] = 77  # not an orientation at all
    ok("jpeg-exif-bogus-orientation", jpeg_with_exif(base, bogus_exif), (48, 32), "image/jpeg")
    frames = [Image.fromarray(pattern(40, 24, seed=s)).quantize(32) for s in range(3)]
    ok(
        "gif-animated",
        save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        (40, 24),
        "image/gif",
    )
    ok("gif-single", save(base.quantize(64), "GIF"), (48, 32), "image/gif")
    ok("bmp-24bit", save(base, "BMP"), (48, 32), "image/bmp", exact=rgb)
    ok("bmp-8bit-palette", save(base.quantize(16), "BMP"), (48, 32), "image/bmp")
    ok("tiff-rgb", save(base, "TIFF"), (48, 32), "image/tiff", exact=rgb)
    ok("tiff-lzw", save(base, "TIFF", compression="tiff_lzw"), (48, 32), "image/tiff", exact=rgb)
    ok(
        "tiff-multipage",
        save(base, "TIFF", save_all=True, append_images=[base.rotate(90, expand=True)]),
        (48, 32),
        "image/tiff",
    )
    ok("webp-lossy", save(base, "WEBP", quality=80), (48, 32), "image/webp")
    ok("webp-lossless", save(base, "WEBP", lossless=True), (48, 32), "image/webp", exact=rgb)
    ok("png-as-image-jpeg", save(base, "PNG"), (48, 32), "image/jpeg", note="content sniffed, not trusted")
    ok("png-no-content-type", save(base, "PNG"), (48, 32), "application/octet-stream")
    either(
        "ico", save(base, "ICO", sizes=[(32, 32)]), (32, 21), "image/x-icon", "a format a server may refuse"
    )
    either("ppm", save(base, "PPM"), (48, 32), "image/x-portable-pixmap", "a format a server may refuse")
    either("avif", save(base, "AVIF"), (48, 32), "image/avif", "needs a Pillow built with AVIF")
    either(
        "png-ztxt-bomb",
        png_with_ztxt_bomb(save(base, "PNG"), 64 * 1024 * 1024),
        (48, 32),
        "image/png",
        "64 MiB of text metadata; Pillow refuses chunks over its text limit",
    )
    return cases


def _hostile_cases(max_upload_bytes: int) -> list[FaultCase]:
    """Broken, lying or oversized inputs: each must give a clean 4xx with the JSON error body."""
    good_png = save(Image.fromarray(pattern(48, 32)), "PNG")
    good_jpeg = save(Image.fromarray(pattern(48, 32)), "JPEG")
    big = frozenset({413})
    bad_or_big = frozenset({400, 413})
    cases = [
        FaultCase("empty", b"", Expect.REJECT),
        FaultCase("empty-raw-body", b"", Expect.REJECT, content_type="image/png", send="raw"),
        FaultCase("text", b"hello, this is not an image\n" * 4, Expect.REJECT, content_type="text/plain"),
        FaultCase(
            "html", b"<!doctype html><html><body>hi</body></html>", Expect.REJECT, content_type="text/html"
        ),
        FaultCase(
            "json", b'{"image": "aGVsbG8="}', Expect.REJECT, content_type="application/json", send="raw"
        ),
        FaultCase(
            "svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
            Expect.REJECT,
            content_type="image/svg+xml",
        ),
        FaultCase(
            "pdf",
            b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
            Expect.REJECT,
            content_type="application/pdf",
        ),
        FaultCase(
            "random-bytes",
            np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            Expect.REJECT,
        ),
        FaultCase("png-signature-only", PNG_SIGNATURE, Expect.REJECT, content_type="image/png"),
        FaultCase(
            "png-truncated-half", good_png[: len(good_png) // 2], Expect.REJECT, content_type="image/png"
        ),
        FaultCase("png-truncated-after-ihdr", good_png[:33], Expect.REJECT, content_type="image/png"),
        FaultCase(
            "png-bad-ihdr-crc",
            good_png[:29] + bytes([good_png[29] ^ 0xFF]) + good_png[30:],
            Expect.REJECT,
            content_type="image/png",
        ),
        FaultCase(
            "png-corrupt-idat",
            PNG_SIGNATURE
            + png_ihdr(48, 32)
            + png_chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 200)
            + png_chunk(b"IEND", b""),
            Expect.REJECT,
            content_type="image/png",
        ),
        FaultCase("png-zero-width", png_claiming(0, 32), Expect.REJECT, content_type="image/png"),
        FaultCase(
            "png-100000x100000",
            png_claiming(100_000, 100_000),
            Expect.REJECT,
            content_type="image/png",
            statuses=bad_or_big,
            note="10^10 declared pixels: refused before any pixel is decoded",
        ),
        FaultCase(
            "png-bomb-20000x20000",
            png_bomb(20_000, 20_000),
            Expect.REJECT,
            content_type="image/png",
            statuses=big,
            note="400 Mpx of real, highly compressible 1-bit data",
        ),
        FaultCase("jpeg-soi-only", b"\xff\xd8", Expect.REJECT, content_type="image/jpeg"),
        FaultCase("jpeg-truncated-header", good_jpeg[:120], Expect.REJECT, content_type="image/jpeg"),
        FaultCase(
            "jpeg-garbage-after-soi",
            b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x13" * 300,
            Expect.REJECT,
            content_type="image/jpeg",
        ),
        FaultCase(
            "jpeg-claiming-65000x65000",
            jpeg_claiming(65_000, 65_000),
            Expect.REJECT,
            content_type="image/jpeg",
            statuses=bad_or_big,
        ),
        FaultCase("gif-header-only", b"GIF89a", Expect.REJECT, content_type="image/gif"),
        FaultCase(
            "gif-claiming-65535x65535",
            gif_claiming(65_535, 65_535),
            Expect.REJECT,
            content_type="image/gif",
            statuses=bad_or_big,
        ),
        FaultCase(
            "bmp-claiming-60000x60000",
            bmp_claiming(60_000, 60_000),
            Expect.REJECT,
            content_type="image/bmp",
            statuses=bad_or_big,
        ),
        FaultCase("tiff-header-only", b"II*\x00\x08\x00\x00\x00", Expect.REJECT, content_type="image/tiff"),
        FaultCase(
            "webp-truncated",
            save(Image.fromarray(pattern(48, 32)), "WEBP")[:40],
            Expect.REJECT,
            content_type="image/webp",
        ),
        FaultCase(
            "oversize-body",
            good_png + b"\x00" * (max_upload_bytes + 1024),
            Expect.REJECT,
            content_type="image/png",
            statuses=big,
            note="more bytes than the upload cap",
        ),
        FaultCase(
            "oversize-raw-body",
            good_png + b"\x00" * (max_upload_bytes + 1024),
            Expect.REJECT,
            content_type="image/png",
            send="raw",
            statuses=big,
        ),
        FaultCase(
            "oversize-chunked-body",
            good_png + b"\x00" * (max_upload_bytes + 1024),
            Expect.REJECT,
            content_type="image/png",
            send="chunked",
            statuses=big,
            note="no Content-Length: the cap must hold while streaming",
        ),
        FaultCase(
            "multipart-two-files",
            good_png,
            Expect.REJECT,
            send="multipart-twice",
            content_type="image/png",
            statuses=frozenset({400, 413, 422}),
        ),
        FaultCase(
            "multipart-bad-boundary",
            good_png,
            Expect.REJECT,
            send="multipart-broken",
            content_type="image/png",
            statuses=frozenset({400, 422}),
        ),
        FaultCase(
            "multipart-wrong-field",
            good_png,
            Expect.REJECT,
            field_name="picture",  # `image` and `file` are the accepted names
            statuses=frozenset({400, 422}),
        ),
        FaultCase(
            "form-urlencoded",
            b"image=hello",
            Expect.REJECT,
            content_type="application/x-www-form-urlencoded",
            send="form",
        ),
        FaultCase(
            "bad-format-option",
            good_png,
            Expect.REJECT,
            content_type="image/png",
            params={"format": "bogus"},
            statuses=frozenset({400, 422}),
        ),
        FaultCase(
            "bad-alpha-option",
            good_png,
            Expect.REJECT,
            content_type="image/png",
            params={"alpha": "7"},
            statuses=frozenset({400, 422}),
        ),
        FaultCase(
            "bad-mode-option",
            good_png,
            Expect.REJECT,
            content_type="image/png",
            params={"mode": "sideways"},
            statuses=frozenset({400, 422}),
        ),
        FaultCase(
            "bad-scales-option",
            good_png,
            Expect.REJECT,
            content_type="image/png",
            params={"scales": "big"},
            statuses=frozenset({400, 422}),
        ),
        FaultCase(
            "unknown-model",
            good_png,
            Expect.REJECT,
            content_type="image/png",
            params={"model": "no-such-model"},
            statuses=frozenset({404}),
        ),
    ]
    return cases


def build_corpus(*, max_upload_bytes: int) -> list[FaultCase]:
    """The whole corpus; ``max_upload_bytes`` is the server's byte cap (oversize cases exceed it)."""
    cases = _odd_valid_cases() + _hostile_cases(max_upload_bytes)
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate case names: {sorted(duplicates)}")
    return cases


#: How each case is turned into request arguments for httpx (kept here so the test stays readable).
RequestArgs = dict[str, object]


def request_args(case: FaultCase) -> RequestArgs:
    """``httpx`` keyword arguments (``content``/``files``/``data`` + ``headers``) for one case."""
    if case.send == "raw":
        headers = {"content-type": case.content_type} if case.content_type else {}
        return {"content": case.data, "headers": headers}
    if case.send == "chunked":
        headers = {"content-type": case.content_type} if case.content_type else {}
        data = case.data
        pieces = (data[i : i + 65536] for i in range(0, len(data), 65536))
        return {"content": pieces, "headers": headers}
    if case.send == "form":
        return {"content": case.data, "headers": {"content-type": "application/x-www-form-urlencoded"}}
    boundary = "danet-fault-corpus-boundary"
    parts = [(case.field_name, case.filename, case.data, case.content_type)]
    if case.send == "multipart-twice":
        parts.append((case.field_name, "second", case.data, case.content_type))
    body = multipart_body(parts, boundary)
    if case.send == "multipart-broken":
        body = body[: -len(f"--{boundary}--\r\n")]
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}
