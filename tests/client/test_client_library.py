"""DanetClient over REST and gRPC against a real danet-serve process: same answers, one error type."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.server_proc import ServerProcess
from client import DanetClient, DanetClientError, Segmentation
from tests.client.conftest import API_KEY, keyed_server
from tests.conftest import free_port
from tests.grpc.harness import OnnxReference, random_image
from tests.onnx_fixtures import RGB_CLASSES, RGB_PALETTE

PROTOCOLS = ["rest", "grpc"]


def connect(server: ServerProcess, protocol: str, **kwargs: object) -> DanetClient:
    if protocol == "grpc":
        return DanetClient(grpc=server.grpc_target, **kwargs)  # type: ignore[arg-type]
    return DanetClient(server.url, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, live_server: ServerProcess) -> Iterator[DanetClient]:
    with connect(live_server, request.param, api_key=API_KEY, timeout=30) as c:
        yield c


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def rgb(result: Segmentation) -> np.ndarray:
    assert result.png is not None
    with Image.open(io.BytesIO(result.png)) as picture:
        return np.asarray(picture.convert("RGB"))


def test_index_from_path_bytes_and_array(
    client: DanetClient, reference: OnnxReference, tmp_path: Path
) -> None:
    image = random_image(7, 30, 44)
    path = tmp_path / "in.png"
    path.write_bytes(png(image))
    for source in (path, str(path), png(image), image):
        result = client.segment(source, format="index")
        assert (result.model, result.height, result.width) == ("tiny", 30, 44)
        assert result.provider == "CPUExecutionProvider"
        np.testing.assert_array_equal(result.labels(), reference.labels(image))


def test_color_overlay_and_json(client: DanetClient, reference: OnnxReference) -> None:
    image = random_image(8, 24, 32)
    labels = reference.labels(image)
    palette = np.asarray(RGB_PALETTE, dtype=np.uint8)
    np.testing.assert_array_equal(rgb(client.segment(image, format="color")), palette[labels])
    np.testing.assert_array_equal(rgb(client.segment(image, format="overlay", alpha=0.0)), image)
    np.testing.assert_array_equal(rgb(client.segment(image, format="overlay", alpha=1.0)), palette[labels])

    result = client.segment(image, format="json", mode="slide", flip=True, scales=[1.0, 1.0])
    assert result.png is None and result.document is not None
    counts = np.bincount(labels.ravel(), minlength=len(RGB_CLASSES))
    assert result.stats is not None
    assert {(s.id, s.name, s.pixels) for s in result.stats} == {
        (i, RGB_CLASSES[i], int(n)) for i, n in enumerate(counts) if n
    }
    assert [c["id"] for c in result.document["classes"]] == [s.id for s in result.stats]
    assert (result.document["width"], result.document["height"]) == (32, 24)


def test_list_models_and_ready(client: DanetClient) -> None:
    assert client.ready() is True
    [model] = client.list_models()
    assert model.name == "tiny"
    assert model.classes == tuple(RGB_CLASSES)
    assert model.palette == tuple(RGB_PALETTE)


@pytest.mark.parametrize(
    ("call", "codes"),
    [
        (lambda c: c.segment(random_image(0), model="no-such-model"), {"NOT_FOUND", "model_not_found"}),
        (lambda c: c.segment(b"this is not an image"), {"INVALID_ARGUMENT", "invalid_image"}),
        (lambda c: c.segment(random_image(0), scales=[9.0]), {"INVALID_ARGUMENT", "invalid_option"}),
    ],
    ids=["unknown-model", "not-an-image", "bad-scale"],
)
def test_server_refusals_are_client_errors(client: DanetClient, call: object, codes: set[str]) -> None:
    with pytest.raises(DanetClientError) as info:
        call(client)  # type: ignore[operator]
    assert info.value.code in codes
    assert not info.value.unreachable


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("key", [None, "wrong"])
def test_api_key_is_required(live_server: ServerProcess, protocol: str, key: str | None) -> None:
    with connect(live_server, protocol, api_key=key) as c, pytest.raises(DanetClientError) as info:
        c.segment(random_image(0))
    assert info.value.code in {"UNAUTHENTICATED", "unauthenticated"}


UNICODE_KEY = "clé-ключ-鍵"


@pytest.fixture(scope="module")
def unicode_key_server(tiny_onnx: Path) -> Iterator[ServerProcess]:
    yield from keyed_server(tiny_onnx, UNICODE_KEY)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_key_outside_ascii_is_sent_so_the_server_accepts_it(
    unicode_key_server: ServerProcess, protocol: str
) -> None:
    """REST sends it as UTF-8 header bytes, gRPC as binary ``x-api-key-bin`` (text metadata is ASCII)."""
    with connect(unicode_key_server, protocol, api_key=UNICODE_KEY, timeout=30) as c:
        result = c.segment(random_image(0))
        assert (result.height, result.width) == (20, 28)
    wrong = connect(unicode_key_server, protocol, api_key=UNICODE_KEY[:-1], timeout=30)
    with wrong, pytest.raises(DanetClientError) as info:
        wrong.segment(random_image(0))
    assert info.value.code in {"UNAUTHENTICATED", "unauthenticated"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server(protocol: str) -> None:
    port = free_port()  # nothing listens there
    client = (
        DanetClient(grpc=f"127.0.0.1:{port}")
        if protocol == "grpc"
        else DanetClient(f"http://127.0.0.1:{port}")
    )
    with client, pytest.raises(DanetClientError) as info:
        client.ready()
    assert info.value.unreachable
    assert str(port) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"image": np.zeros((8, 8), dtype=np.uint8)}, "[H, W, 3]"),
        ({"image": np.zeros((8, 8, 3), dtype=np.float32)}, "float32"),
        ({"image": b""}, "0 bytes"),
        ({"image": "/no/such/file.png"}, "not a file"),
        ({"image": 42}, "int"),
        ({"format": "svg"}, "format"),
        ({"alpha": 1.5}, "alpha"),
        ({"mode": "tiles"}, "mode"),
        ({"scales": [0.0]}, "scales"),
        ({"max_size": 0}, "max_size"),
    ],
)
def test_inputs_are_validated_before_sending(kwargs: dict[str, object], words: str) -> None:
    # Nothing listens on this address: a validation error proves nothing was sent.
    for client in (
        DanetClient(grpc=f"127.0.0.1:{free_port()}"),
        DanetClient(f"http://127.0.0.1:{free_port()}"),
    ):
        arguments = {"image": np.zeros((8, 8, 3), dtype=np.uint8), **kwargs}
        with client, pytest.raises(DanetClientError) as info:
            client.segment(**arguments)  # type: ignore[arg-type]
        assert info.value.code == "invalid_input"
        assert words in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"url": "http://a", "grpc": "b:1"}, {"url": "localhost:8000"}, {"grpc": "http://x:1"}, {"timeout": 0}],
)
def test_bad_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(DanetClientError):
        DanetClient(**kwargs)  # type: ignore[arg-type]


def test_closed_client_raises_the_client_error(live_server: ServerProcess) -> None:
    client = DanetClient(grpc=live_server.grpc_target, api_key=API_KEY)
    with client:
        assert client.ready()
    with pytest.raises(DanetClientError, match="closed"):
        client.ready()
