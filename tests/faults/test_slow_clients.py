"""Slow and idle clients against a real danet-serve process, from raw sockets: headers or a body trickled one
byte at a time, connections that send nothing, a client that never reads its reply, more connections than
the cap, idle gRPC connections.

The server runs with short limits (seconds) so that each case ends quickly; each test checks what the
client gets (408, 503, GOAWAY, a closed socket) and that it got it before it had finished sending, never how
long it took. The times are printed (``-s``) for the record.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.server_proc import ServerProcess
from tests.conftest import make_scene, server_process

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
BODY_MIN_RATE = 1000  # bytes/s
MAX_CONNECTIONS = 8
GRPC_IDLE_S = 1.0
GRPC_STREAMS = 7
WRITE_TIMEOUT_S = 1.0
TRICKLE_S = 0.1  # one byte per TRICKLE_S: 10 bytes/s, far below BODY_MIN_RATE


@pytest.fixture(scope="module")
def slow_server(tiny_onnx: Path) -> Iterator[ServerProcess]:
    env = {
        "DANET_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "DANET_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "DANET_HTTP_BODY_MIN_RATE": str(BODY_MIN_RATE),
        "DANET_HTTP_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
        "DANET_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "DANET_KEEP_ALIVE_S": "1",
        "DANET_GRPC_MAX_CONNECTION_IDLE_S": str(GRPC_IDLE_S),
        "DANET_GRPC_MAX_CONCURRENT_STREAMS": str(GRPC_STREAMS),
        "DANET_LOG_LEVEL": "WARNING",
        "DANET_ACCESS_LOG": "false",
    }
    with server_process([tiny_onnx], env=env) as server:
        yield server
        log = server.log_text()
    assert "Traceback" not in log, log[-4000:]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (the socket timeout fails the test if it never does)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def body_length(head: bytes) -> int:
    """The Content-Length of a response head."""
    return next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = body_length(head)
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def trickle(sock: socket.socket, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` one byte per TRICKLE_S until the server answers or closes: (bytes sent, reply)."""
    for sent, byte in enumerate(data):
        readable, _, _ = select.select([sock], [], [], TRICKLE_S)
        if readable:
            return sent, read_all(sock)
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent, b""
    return len(data), b""


def test_headers_sent_one_byte_at_a_time_are_dropped(slow_server: ServerProcess) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 400 + b"\r\n\r\n"
    with connect(slow_server.http_port) as sock:
        started = time.monotonic()
        sent, reply = trickle(sock, head)
        elapsed = time.monotonic() - started
    print(f"\nslow headers: dropped after {elapsed:.2f} s, {sent} of {len(head)} bytes sent")
    assert sent < len(head), "the server waited for the whole trickled head"
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"http_header_timeout_s" in reply


def test_a_connection_that_sends_nothing_is_dropped(slow_server: ServerProcess) -> None:
    with connect(slow_server.http_port) as sock:
        started = time.monotonic()
        reply = read_all(sock)
    print(f"\nsilent connection: closed after {time.monotonic() - started:.2f} s")
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_a_trickled_body_is_dropped(slow_server: ServerProcess) -> None:
    body = b"\x89PNG" + b"\0" * 2000
    head = (
        f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with connect(slow_server.http_port) as sock:
        sock.sendall(head.encode())
        started = time.monotonic()
        sent, reply = trickle(sock, body)
        elapsed = time.monotonic() - started
    print(f"\nslow body: dropped after {elapsed:.2f} s, {sent} of {len(body)} bytes sent")
    assert sent < len(body)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"request body too slow" in reply


def test_a_slow_second_request_on_a_kept_alive_connection_is_dropped(slow_server: ServerProcess) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(slow_server.http_port) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sent, reply = trickle(sock, request[:-2] + b"X-Slow: " + b"a" * 400 + b"\r\n\r\n")
    assert sent < len(request) + 400
    # 408 from the header deadline, or closed by the (shorter) keep-alive timeout before the first byte
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408 "), reply[:200]


def test_an_idle_keep_alive_connection_is_closed(slow_server: ServerProcess) -> None:
    with connect(slow_server.http_port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        assert read_all(sock) == b""  # closed without a word after keep_alive_s


def logits_request(height: int, width: int) -> bytes:
    """A KServe v2 binary request whose reply carries the tiny model's FP32 logits (16 bytes a pixel)."""
    batch = make_scene(height, width, seed=3)[None]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": list(batch.shape),
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + batch.tobytes()
    head = (
        "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def small_window(port: int) -> socket.socket:
    """A connection with a 4 KiB receive buffer (set before connecting, so the window stays small)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def test_a_client_that_never_reads_its_reply_is_cut_off(slow_server: ServerProcess) -> None:
    """A reply of 8 MB to a client that reads nothing: once the socket's buffers are full the server holds
    the rest; after the write deadline it aborts the connection and drops it, so the client can never read
    the whole reply. Others are served meanwhile."""
    with small_window(slow_server.http_port) as sock:
        sock.sendall(logits_request(512, 1024))
        time.sleep(WRITE_TIMEOUT_S + 4)  # read nothing: the reply is encoded, sent in part, and stalls
        with httpx.Client(base_url=slow_server.http_url, timeout=10) as client:
            assert client.get("/readyz").status_code == 200
        received = read_all(sock)  # what the kernel held, then the reset or the close
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), received[:300]
    length = body_length(head)
    print(f"\nreceived {len(body)} bytes of a {length}-byte reply")
    assert length > 4 * 2**20 and len(body) < length, (
        "the whole reply was kept for a client that did not read"
    )


def test_a_client_that_reads_its_reply_slowly_gets_all_of_it(slow_server: ServerProcess) -> None:
    """The same 8 MB reply to a client that reads 128 KiB, stops for longer than the write deadline, and does
    that twice more: the bytes it read bought the time (1 s per http_body_min_rate bytes), so it gets every
    byte."""
    with small_window(slow_server.http_port) as sock:
        sock.sendall(logits_request(512, 1024))
        received = b""
        stalls = 0
        while chunk := sock.recv(65536):
            received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 200 ") and len(body) >= body_length(head):
                break
            if stalls < 3 and len(received) >= (stalls + 1) * 128 * 1024:
                stalls += 1
                time.sleep(WRITE_TIMEOUT_S * 1.5)
    head, _, body = received.partition(b"\r\n\r\n")
    print(f"\nreceived {len(received)} bytes, stalls {stalls}")
    assert stalls == 3, stalls
    assert head.startswith(b"HTTP/1.1 200 ") and len(body) == body_length(head) > 4 * 2**20, received[:300]


def test_ordinary_requests_are_untouched(slow_server: ServerProcess) -> None:
    """A body sent in pieces, each well within the deadline the bytes buy, is served."""
    with httpx.Client(base_url=slow_server.http_url, timeout=30) as client:

        def pieces() -> Iterator[bytes]:
            for _ in range(3):
                yield b"x" * 4000
                time.sleep(0.5)

        reply = client.post("/segment", content=pieces(), headers={"Content-Type": "image/png"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_image"


def test_one_connection_over_the_cap_is_refused_and_readyz_stays_up(slow_server: ServerProcess) -> None:
    with httpx.Client(base_url=slow_server.http_url, timeout=10) as client:
        # below the cap: slow connections do not delay anyone else
        slow = [connect(slow_server.http_port) for _ in range(MAX_CONNECTIONS - 2)]
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        assert client.get("/readyz").status_code == 200  # its own (the cap-1-th) connection
        print(
            f"\n/readyz with {len(slow)} slow connections open: {1000 * (time.monotonic() - started):.1f} ms"
        )
        # at the cap: one more connection gets 503 and is closed
        slow.append(connect(slow_server.http_port))
        with connect(slow_server.http_port) as extra:
            reply = read_all(extra)
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
        assert b"max_connections" in reply and b"retry-after: 1" in reply.lower()
        # the slow ones are dropped by their header deadline; then there is room again
        for sock in slow:
            assert read_all(sock).startswith(b"HTTP/1.1 408 ")
            sock.close()
        client.close()
    with httpx.Client(base_url=slow_server.http_url, timeout=10) as fresh:
        assert fresh.get("/readyz").status_code == 200


# --- gRPC ------------------------------------------------------------------------------------------
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, GOAWAY = 0x4, 0x7
MAX_CONCURRENT_STREAMS = 0x3


def frames(sock: socket.socket) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, payload) of each HTTP/2 frame until the server closes."""
    buffer = b""
    while True:
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            yield kind, flags, buffer[9 : 9 + length]
            buffer = buffer[9 + length :]
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return
        if not chunk:
            return
        buffer += chunk


def test_grpc_connection_without_a_handshake_is_dropped(slow_server: ServerProcess) -> None:
    with connect(slow_server.grpc_port) as sock:
        sock.sendall(PREFACE[:5])  # half a preface, then nothing
        started = time.monotonic()
        read_all(sock)
    print(f"\ngRPC half handshake: closed after {time.monotonic() - started:.2f} s")


def test_grpc_idle_connection_gets_goaway_and_streams_are_capped(slow_server: ServerProcess) -> None:
    with connect(slow_server.grpc_port) as sock:
        sock.sendall(PREFACE + struct.pack(">I", 0)[1:] + bytes([SETTINGS, 0]) + struct.pack(">I", 0))
        started = time.monotonic()
        seen = list(frames(sock))
    print(f"\ngRPC idle connection: closed after {time.monotonic() - started:.2f} s")
    settings = b"".join(payload for kind, flags, payload in seen if kind == SETTINGS and not flags & 1)
    values = {
        struct.unpack(">H", settings[i : i + 2])[0]: struct.unpack(">I", settings[i + 2 : i + 6])[0]
        for i in range(0, len(settings), 6)
    }
    assert values.get(MAX_CONCURRENT_STREAMS) == GRPC_STREAMS
    assert any(kind == GOAWAY for kind, _, _ in seen), seen


GRPC_CONNECTIONS = 3


@pytest.fixture(scope="module")
def capped_grpc_server(tiny_onnx: Path) -> Iterator[ServerProcess]:
    env = {"DANET_GRPC_MAX_CONNECTIONS": str(GRPC_CONNECTIONS), "DANET_LOG_LEVEL": "WARNING"}
    with server_process([tiny_onnx], env=env) as server:
        yield server


def server_settings_frame(sock: socket.socket) -> bool:
    """Send the client preface and an empty SETTINGS; True when the server answers with its SETTINGS."""
    sock.sendall(PREFACE + struct.pack(">I", 0)[1:] + bytes([SETTINGS, 0]) + struct.pack(">I", 0))
    return any(kind == SETTINGS for kind, _, _ in frames(sock))  # stops at the first SETTINGS


def test_grpc_connections_over_the_cap_are_closed(capped_grpc_server: ServerProcess) -> None:
    """grpc_max_connections open HTTP/2 connections are served; one more is closed without a frame, and
    when one of them goes, a new connection is served again."""
    port = capped_grpc_server.grpc_port
    held = [connect(port) for _ in range(GRPC_CONNECTIONS)]
    try:
        assert all(server_settings_frame(sock) for sock in held)
        with connect(port) as extra:
            assert not server_settings_frame(extra), "a connection over the cap was served"
        held.pop().close()
        time.sleep(0.5)  # the server notices the close
        with connect(port) as again:
            assert server_settings_frame(again)
    finally:
        for sock in held:
            sock.close()
