"""Optional TLS: with a certificate and key configured, the server speaks only TLS."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import DanetClient, DanetClientError
from server.grpc.server import server_credentials
from server.settings import Settings
from tests.grpc.harness import OnnxReference, ServerThread, random_image, settings_for


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tiny_onnx: Path, certificate: tuple[Path, Path]) -> Iterator[ServerThread]:
    cert, key = certificate
    base = settings_for(tiny_onnx).model_dump()
    server = ServerThread(
        Settings(**{**base, "grpc_tls_cert": cert, "grpc_tls_key": key}), start_engine=False
    )
    server.call(server.engine.start)
    yield server
    server.stop()


def test_tls_round_trip_with_the_client(
    tls_server: ServerThread, certificate: tuple[Path, Path], reference: OnnxReference
) -> None:
    image = random_image(4, 24, 24)
    with DanetClient(
        grpc=f"localhost:{tls_server.port}", root_certificates=certificate[0].read_bytes()
    ) as client:
        result = client.segment(image, format="index")
    np.testing.assert_array_equal(result.labels(), reference.labels(image))


def test_plaintext_clients_are_refused(tls_server: ServerThread) -> None:
    with (
        grpc.insecure_channel(f"localhost:{tls_server.port}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with (
        DanetClient(grpc=f"localhost:{tls_server.port}", timeout=5) as client,
        pytest.raises(DanetClientError),
    ):
        client.ready()


def test_half_configured_tls_is_an_error(tiny_onnx: Path, certificate: tuple[Path, Path]) -> None:
    base = settings_for(tiny_onnx).model_dump()
    with pytest.raises(RuntimeError, match="both"):
        server_credentials(Settings(**{**base, "grpc_tls_cert": certificate[0]}))
    assert server_credentials(settings_for(tiny_onnx)) is None
