"""SIGTERM under load loses no accepted request.

Clients keep sending while the server is told to stop. Every HTTP request (a fresh connection each, so
that "accepted" is unambiguous) must end in a complete response (200, or 503 while shutting down) or a
refused connection; never a truncated body, never a reset after the request was sent (except a connection
opened after the signal and still in the kernel's listen backlog when the listener closes, which the kernel
resets: see ``_in_backlog``). gRPC calls must end OK, RESOURCE_EXHAUSTED, UNAVAILABLE (not accepted) or
CANCELLED (gRPC cancels a call its transport had received but the application had not yet picked up when
shutdown began: see ``_never_picked_up``); every call started well before the signal must end OK. The
server exits 0 without a traceback, and requests that were in flight when the signal arrived were answered.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bench.clients import grpc_channel_options, segmentation_stubs
from bench.server_proc import ServerProcess
from tests.load.conftest import picture

pytestmark = pytest.mark.load

CLIENTS = 8
IMAGE = picture(256, 256, seed=5)
SIGNAL_AFTER_COMPLETED = 12  # let the load settle before stopping


@dataclass
class Attempt:
    outcome: str  # complete | refused | no-response | truncated | error
    status: int | str | None
    started: float
    sent: float | None
    ended: float
    detail: str = ""


def _env() -> dict[str, str]:
    return {
        "DANET_MAX_QUEUE": "64",
        "DANET_SHUTDOWN_GRACE_S": "60",
        "DANET_ACCESS_LOG": "false",
        "DANET_LOG_LEVEL": "INFO",
        "DANET_LOG_FORMAT": "text",
    }


def _http_once(host: str, port: int, body: bytes = IMAGE) -> Attempt:
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=120)
    try:
        connection.connect()
    except ConnectionRefusedError:
        return Attempt("refused", None, started, None, time.monotonic())
    sent = None
    try:
        connection.request(
            "POST",
            "/segment?format=index",
            body=body,
            headers={"Content-Type": "image/png", "Connection": "close"},
        )
        sent = time.monotonic()
        response = connection.getresponse()
        body = response.read()  # raises IncompleteRead on a short body
        expected = response.getheader("content-length")
        if expected is not None and int(expected) != len(body):
            return Attempt(
                "truncated", response.status, started, sent, time.monotonic(), f"{len(body)}/{expected}"
            )
        return Attempt(
            "complete", response.status, started, sent, time.monotonic(), body[:120].decode("latin-1")
        )
    except http.client.IncompleteRead as exc:
        return Attempt("truncated", None, started, sent, time.monotonic(), repr(exc)[:200])
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
        return Attempt("no-response", None, started, sent, time.monotonic(), repr(exc)[:200])
    except OSError as exc:
        return Attempt("error", None, started, sent, time.monotonic(), repr(exc)[:200])
    finally:
        connection.close()


def _grpc_once(stub: object, request: object) -> Attempt:
    started = time.monotonic()
    try:
        stub.Segment(request, timeout=120)  # type: ignore[attr-defined]
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        return Attempt("complete", code.name, started, started, time.monotonic(), exc.details() or "")  # type: ignore[attr-defined]
    return Attempt("complete", "OK", started, started, time.monotonic())


def _run_until_stopped(server: ServerProcess, send: object) -> tuple[list[Attempt], float, int]:
    """Clients loop until they are refused twice in a row; SIGTERM after some completed requests."""
    attempts: list[Attempt] = []
    lock = threading.Lock()
    done = threading.Event()

    def client() -> None:
        refused_in_a_row = 0
        while refused_in_a_row < 2 and not done.is_set():
            attempt = send()  # type: ignore[operator]
            with lock:
                attempts.append(attempt)
            refused_in_a_row = (
                refused_in_a_row + 1 if attempt.outcome == "refused" or attempt.status == "UNAVAILABLE" else 0
            )

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    while True:
        with lock:
            completed = sum(a.status in (200, "OK") for a in attempts)
        if completed >= SIGNAL_AFTER_COMPLETED:
            break
        assert server.process is not None and server.process.poll() is None, server.log_tail()
        time.sleep(0.01)
    signalled = time.monotonic()
    server.terminate()
    code = server.wait(timeout_s=120)
    for thread in threads:
        thread.join(timeout=150)
    done.set()
    return attempts, signalled, code


def _summary(attempts: list[Attempt]) -> str:
    counts: dict[str, int] = {}
    for a in attempts:
        key = f"{a.outcome}:{a.status}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _in_backlog(attempt: Attempt, signalled: float) -> bool:
    """A connection opened after SIGTERM that was reset without a response: its handshake completed in the
    kernel's listen backlog, which the kernel resets when the server closes its listening socket; the
    application never accepted it (seen once in a CI trial). Requests sent before the signal get no
    such allowance."""
    return attempt.outcome == "no-response" and attempt.started > signalled


ACCEPTED_BEFORE_S = 0.5  # a call started this long before the signal had certainly been picked up


def _never_picked_up(attempt: Attempt, signalled: float) -> bool:
    """A call cancelled by gRPC core at shutdown: its stream had reached the server but was still waiting for
    the application to pick it up, and core cancels such calls when shutdown begins (seen in CI trials, for
    calls started just after and just before the signal). It never ran, so a retry is safe. Calls started
    ``ACCEPTED_BEFORE_S`` or more before the signal get no such allowance."""
    return attempt.status == "CANCELLED" and attempt.started > signalled - ACCEPTED_BEFORE_S


def _timeline(attempts: list[Attempt], signalled: float) -> str:
    """The calls that did not end OK, timed from the signal, for a failure message."""
    return "; ".join(
        f"{a.status} started {a.started - signalled:+.3f}s ended {a.ended - signalled:+.3f}s"
        for a in attempts
        if a.status not in (200, "OK")
    )[:1500]


def _check_exit(server: ServerProcess, code: int) -> None:
    log = server.log_text()
    assert code == 0, f"danet-serve exited with {code}:\n{server.log_tail()}"
    assert "Traceback" not in log, log[-4000:]


def test_http_sigterm_loses_no_accepted_request(work_onnx: Path) -> None:
    server = ServerProcess([work_onnx], env=_env(), grpc=False)
    server.start()
    try:
        attempts, signalled, code = _run_until_stopped(
            server, lambda: _http_once(server.host, server.http_port)
        )
    finally:
        server.kill()
    print(f"\nHTTP: {_summary(attempts)}")
    _check_exit(server, code)
    bad = [a for a in attempts if a.outcome not in ("complete", "refused") and not _in_backlog(a, signalled)]
    assert not bad, f"requests lost or cut: {bad[:5]} ({_summary(attempts)})"
    statuses = {a.status for a in attempts if a.outcome == "complete"}
    assert statuses <= {200, 503}, f"unexpected statuses {statuses}"
    drained = [a for a in attempts if a.status == 200 and a.sent is not None and a.sent < signalled < a.ended]
    assert drained, "no request was in flight at SIGTERM: the test did not exercise draining"
    assert any(a.outcome == "refused" for a in attempts), "clients never saw the server stop listening"


def test_grpc_sigterm_loses_no_accepted_call(work_onnx: Path) -> None:
    pb2, pb2_grpc = segmentation_stubs()
    request = pb2.SegmentRequest(encoded=IMAGE, options=pb2.SegmentOptions(outputs=[pb2.OUTPUT_KIND_INDEX]))
    server = ServerProcess([work_onnx], env=_env())
    server.start()
    try:
        with grpc.insecure_channel(server.grpc_target, options=grpc_channel_options()) as channel:
            stub = pb2_grpc.SegmentationServiceStub(channel)
            attempts, signalled, code = _run_until_stopped(server, lambda: _grpc_once(stub, request))
    finally:
        server.kill()
    print(f"\ngRPC: {_summary(attempts)}")
    _check_exit(server, code)
    timeline = f"{_summary(attempts)}: {_timeline(attempts, signalled)}"
    statuses = {a.status for a in attempts if not _never_picked_up(a, signalled)}
    assert statuses <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, timeline
    accepted_before = [a for a in attempts if a.started <= signalled - ACCEPTED_BEFORE_S]
    lost = [a for a in accepted_before if a.status not in ("OK", "RESOURCE_EXHAUSTED")]
    assert not lost, f"calls accepted before SIGTERM were dropped: {lost[:5]} ({timeline})"
    drained = [a for a in attempts if a.status == "OK" and a.started < signalled < a.ended]
    assert drained, "no call was in flight at SIGTERM: the test did not exercise draining"
