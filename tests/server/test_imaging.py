"""Decoding (formats, EXIF, mode conversions, bombs), encoding and the label-map pictures."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from server.imaging import (
    class_stats,
    colorize,
    decode_image,
    encode_png,
    overlay,
    resize_nearest,
    rle_decode,
    rle_encode,
)
from tests.conftest import encode, make_scene

LIMIT = 10_000_000


def decode(data: bytes, **kw: object) -> np.ndarray:
    return decode_image(data, max_pixels=kw.pop("max_pixels", LIMIT), **kw)  # type: ignore[arg-type]


def test_lossless_formats_round_trip() -> None:
    scene = make_scene(20, 30)
    for fmt in ("PNG", "BMP", "TIFF"):
        np.testing.assert_array_equal(decode(encode(scene, fmt)), scene)
    webp = decode(encode(scene, "WEBP", lossless=True))
    np.testing.assert_array_equal(webp, scene)


def test_lossy_and_gif_decode_to_rgb() -> None:
    scene = make_scene(20, 30)
    for fmt in ("JPEG", "GIF"):
        out = decode(encode(scene, fmt))
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - scene.astype(int)).mean() < 40


@pytest.mark.parametrize("subsampling", [0, 2])
@pytest.mark.parametrize("grey", [False, True])
def test_jpeg_fast_path_gives_pillows_pixels(
    monkeypatch: pytest.MonkeyPatch, subsampling: int, grey: bool
) -> None:
    import server.imaging as imaging

    pytest.importorskip("simplejpeg")
    scene = make_scene(24, 40)
    data = encode(scene[:, :, 0] if grey else scene, "JPEG", quality=90, subsampling=subsampling)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    calls: list[bytes] = []
    real = imaging.simplejpeg.decode_jpeg  # type: ignore[union-attr]
    monkeypatch.setattr(imaging.simplejpeg, "decode_jpeg", lambda d, **kw: calls.append(d) or real(d, **kw))
    np.testing.assert_array_equal(decode(data), expected)
    assert calls == [data]  # the fast path decoded it
    monkeypatch.setattr(imaging, "simplejpeg", None)  # and without simplejpeg, Pillow gives the same
    np.testing.assert_array_equal(decode(data), expected)


def test_exif_orientation_is_applied() -> None:
    scene = make_scene(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(scene, "JPEG", quality=100, exif=exif.tobytes())
    out = decode(data)
    assert out.shape == (30, 20, 3)
    expected = np.rot90(scene, k=-1)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 10


def test_mode_conversions() -> None:
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (4, 1))
    out = decode(encode(Image.fromarray(grey, "L")))
    np.testing.assert_array_equal(out[..., 0], grey)
    np.testing.assert_array_equal(out[..., 1], grey)

    palette = Image.fromarray(make_scene(10, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert decode(encode(palette)).shape == (10, 10, 3)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top opaque red, bottom transparent
    out = decode(encode(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)

    sixteen = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096).astype(np.uint16)
    out = decode(encode(Image.fromarray(sixteen)))  # mode I;16
    np.testing.assert_array_equal(out[..., 0], (sixteen >> 8).astype(np.uint8))

    cmyk = Image.new("CMYK", (6, 5), (0, 255, 255, 0))  # pure red in CMYK
    out = decode(encode(cmyk, "JPEG", quality=100))
    assert out.shape == (5, 6, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60

    one_bit = Image.new("1", (5, 5), 1)
    assert decode(encode(one_bit)).min() == 255


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is tiny (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_refused_from_header() -> None:
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode(png_header_only(50_000, 50_000))  # 2.5 gigapixels, never decoded
    with pytest.raises(PayloadTooLarge):
        decode(png_header_only(200, 200), max_pixels=39_999)
    with pytest.raises(InvalidImage):  # within the limit: decoding the bogus data fails cleanly
        decode(png_header_only(200, 200))


def test_undecodable_and_unsupported() -> None:
    with pytest.raises(InvalidImage):
        decode(b"")
    with pytest.raises(InvalidImage):
        decode(b"\x00garbage" * 10)
    with pytest.raises(InvalidImage):
        decode(encode(make_scene(), "JPEG")[:300])
    with pytest.raises(UnsupportedMediaType):
        decode(encode(make_scene(), "PNG"), content_type="application/pdf")
    with pytest.raises(UnsupportedMediaType):
        decode(encode(Image.new("RGB", (16, 16)), "ICO"))
    assert decode(encode(make_scene(), "PNG"), content_type="image/png; q=1").shape == (48, 64, 3)
    assert decode(encode(make_scene(), "PNG"), content_type="application/octet-stream").shape == (48, 64, 3)


def test_encode_png_variants() -> None:
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    picture = Image.open(io.BytesIO(encode_png(labels, palette=palette)))
    assert picture.mode == "P"
    np.testing.assert_array_equal(np.asarray(picture), labels)
    np.testing.assert_array_equal(np.asarray(picture.convert("RGB")), colorize(labels, palette))
    grey = Image.open(io.BytesIO(encode_png(labels)))
    assert grey.mode == "L"
    wide = np.array([[0, 299], [256, 1]], np.uint16)
    sixteen = Image.open(io.BytesIO(encode_png(wide)))
    np.testing.assert_array_equal(np.asarray(sixteen).astype(np.uint16), wide)
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2, 2), np.uint8))


def test_colorize_overlay_stats() -> None:
    labels = np.array([[0, 1, 1, 5]], np.uint8)
    palette = [(10, 20, 30), (200, 100, 0)]
    colours = colorize(labels, palette)
    assert colours.shape == (1, 4, 3) and tuple(colours[0, 1]) == (200, 100, 0)
    assert tuple(colours[0, 3]) == (200, 100, 0)  # ids beyond the palette repeat it
    image = np.full((1, 4, 3), 100, np.uint8)
    np.testing.assert_array_equal(overlay(image, labels, palette, 0.0), image)
    np.testing.assert_array_equal(overlay(image, labels, palette, 1.0), colours)
    half = overlay(image, labels, palette, 0.5)
    assert tuple(half[0, 0]) == (55, 60, 65)
    stats = class_stats(labels, ["a", "b"])
    assert stats == [
        {"id": 0, "name": "a", "pixels": 1, "fraction": 0.25},
        {"id": 1, "name": "b", "pixels": 2, "fraction": 0.5},
        {"id": 5, "name": "class_5", "pixels": 1, "fraction": 0.25},
    ]


def test_rle_round_trip() -> None:
    rng = np.random.default_rng(3)
    for mask in (rng.random((7, 9)) > 0.5, np.ones((3, 3), bool), np.zeros((2, 5), bool)):
        rle = rle_encode(mask)
        assert sum(rle["counts"]) == mask.size
        np.testing.assert_array_equal(rle_decode(rle), mask)
    assert rle_encode(np.array([[True, False]]))["counts"][0] == 0  # COCO: counts start with zeros


def test_resize_nearest() -> None:
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    big = resize_nearest(labels, (4, 6))
    assert big.shape == (4, 6) and set(np.unique(big)) == {1, 2, 3, 4}
    np.testing.assert_array_equal(resize_nearest(big, (2, 2)), labels)
