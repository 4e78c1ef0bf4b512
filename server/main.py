"""``danet-serve``: REST (uvicorn) and gRPC in one process and one event loop over one Engine.

Start-up: settings -> logging -> load models (a bad model file is a clear message and exit status 1, not a
traceback) -> start HTTP and gRPC -> warm up (``/readyz`` turns 200 afterwards). SIGTERM/SIGINT: report
not-ready, stop accepting, let in-flight requests finish (``shutdown_grace_s``), drain the engine, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import uvicorn
from pydantic import ValidationError

from common.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from server import __version__
from server.allocator import reexec_with_allocator
from server.engine import Engine
from server.errors import ModelLoadError
from server.flags import add_settings_flags, explain, flag_name, overrides_from
from server.http.app import create_app
from server.http.protocol import guarded_protocol
from server.logging import configure_logging
from server.settings import Settings

logger = logging.getLogger("server.main")

#: Exit status of usage errors (bad flags, bad settings, missing files), as argparse uses.
USAGE_ERROR = 2


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: ``serve()`` below owns SIGTERM for HTTP and gRPC together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_parser() -> argparse.ArgumentParser:
    """Every ``Settings`` field as a flag (generated: new settings need no edit here)."""
    parser = _Parser(
        prog="danet-serve",
        usage="%(prog)s [OPTION ...]",
        description="Serve DANet segmentation models (ONNX) over REST and gRPC. Every option can also be "
        "set with the DANET_<OPTION> environment variable named in its help; a flag beats the variable, "
        "the variable beats the default. No options = the embedded default model on ports "
        f"{DEFAULT_HTTP_PORT} (HTTP) and {DEFAULT_GRPC_PORT} (gRPC) on all interfaces.",
        allow_abbrev=False,  # new settings must not make an abbreviation in a script ambiguous
    )
    parser.add_argument("--version", action="version", version=f"danet-serve {__version__}")
    add_settings_flags(parser, Settings)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line (exit status 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class StartupError(Exception):
    """A start-up problem explained in one line (the message), with the exit status to use."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    return Settings(**overrides_from(args, Settings))


#: Path settings that must exist before start-up (the others, e.g. the TensorRT cache, are created).
_MUST_EXIST = ("models", "model_repository", "grpc_tls_cert", "grpc_tls_key")


def check_settings(settings: Settings) -> None:
    """Usage problems that validation cannot see (the file system, two servers on one port)."""
    for name in _MUST_EXIST:
        value = getattr(settings, name)
        flag = flag_name(name).removesuffix("s") if isinstance(value, list) else flag_name(name)  # --model
        for path in value if isinstance(value, list) else [value]:
            if path is not None and not Path(path).expanduser().exists():
                raise StartupError(f"{flag} {path}: no such file or directory", status=USAGE_ERROR)
    if settings.http_port and settings.http_port == settings.grpc_port:
        raise StartupError(
            f"--http-port and --grpc-port are both {settings.http_port}; give them different ports",
            status=USAGE_ERROR,
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
        check_settings(settings)
    except ValidationError as exc:
        return _fail(f"invalid setting: {explain(exc, Settings)}", USAGE_ERROR)
    except StartupError as exc:
        return _fail(str(exc), exc.status)
    if argv is None:  # the process itself, not a caller in Python: preload the C allocator (once)
        reexec_with_allocator(settings)
    configure_logging(settings.log_format, settings.log_level)
    if settings.host in ("0.0.0.0", "::", "") and settings.api_key_value() is None:
        logger.warning(
            "listening on all interfaces (%s) without an API key: anyone who can reach ports %d/%d can use "
            "this server; pass --host 127.0.0.1 or --api-key",
            settings.host or "0.0.0.0",
            settings.http_port,
            settings.grpc_port,
        )
    try:
        return asyncio.run(serve(settings))
    except (ModelLoadError, StartupError) as exc:
        return _fail(str(exc), getattr(exc, "status", 1))
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int) -> int:
    """The one line a start-up problem gets (plain text on stderr, whatever the log format)."""
    print(f"danet-serve: error: {' '.join(message.split())}", file=sys.stderr)  # noqa: T201
    return status


def _bind(host: str, port: int, what: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` (as uvicorn binds), or a StartupError saying how to change it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        status = USAGE_ERROR if _bad_host(exc) else 1  # a wrong --host is a usage error, a busy port is not
        raise StartupError(bind_problem(what, host, port, exc), status) from exc
    return sock


def _bad_host(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror)


def bind_problem(what: str, host: str, port: int, exc: BaseException) -> str:
    """One line: which address could not be bound, why, and the flag / variable / make line to change it."""
    code = getattr(exc, "errno", None)
    if _bad_host(exc):
        return (
            f"cannot listen on host {host!r}: it is not an address of this machine; choose another with "
            "--host ADDRESS or DANET_HOST=ADDRESS (127.0.0.1 = this machine only, 0.0.0.0 = all interfaces)"
        )
    key = "http" if what == "HTTP" else "grpc"
    flag, env, example = f"--{key}-port", f"DANET_{key.upper()}_PORT", 8080 if key == "http" else 8081
    if code == errno.EADDRINUSE:
        why = "is already in use"
    elif code == errno.EACCES:
        why = "needs privileges (ports below 1024)"
    else:
        why = f"cannot be opened ({getattr(exc, 'strerror', None) or exc})"
    return (
        f"{what} port {port} on {host} {why}; choose another with {flag} PORT, {env}=PORT or "
        f'make run ARGS="{flag} {example}"'
    )


async def serve(settings: Settings) -> int:
    # Ports first: a busy port fails at once, before the models load. HTTP keeps its socket; gRPC binds
    # its own later (grpc cannot adopt a socket), so its port is only probed here.
    http_socket = _bind(settings.host, settings.http_port, "HTTP")
    try:
        if settings.grpc_port > 0:
            _bind(settings.host, settings.grpc_port, "gRPC").close()
        engine = Engine(settings)
        await engine.load()
    except BaseException:
        http_socket.close()
        raise
    app = create_app(settings, engine)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_config=None,
        access_log=False,  # our middleware logs each request with its id
        lifespan="off",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        server_header=False,
        # header/body deadlines and the connection cap (server/http/protocol.py); idle keep-alive here
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.keep_alive_s,
    )
    http = _Uvicorn(config)

    grpc_server: Any = None
    grpc_port: int | None = None
    if settings.grpc_port >= 0:
        from server.grpc.server import create_grpc_server  # imported here: grpc stays optional for REST tests

        try:
            grpc_server, grpc_port = create_grpc_server(settings, engine)
        except RuntimeError as exc:  # a bind failure (taken since the probe) or unreadable TLS files
            http_socket.close()
            await engine.close()
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
            if "cannot bind" in str(exc):
                raise StartupError(
                    bind_problem(
                        "gRPC", settings.host, settings.grpc_port, cause or OSError(errno.EADDRINUSE, "")
                    )
                ) from exc
            raise StartupError(str(exc)) from exc
        await grpc_server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http_task = asyncio.create_task(http.serve(sockets=[http_socket]), name="http")
    warm_task = asyncio.create_task(engine.warm_up(), name="warm-up")
    while not http.started and not http_task.done():
        await asyncio.sleep(0.02)
    if http_task.done():  # could not bind
        if grpc_server is not None:
            await grpc_server.stop(0)
        warm_task.cancel()
        await engine.close()
        logger.error("HTTP server failed to start on %s:%s", settings.host, settings.http_port)
        return 1
    http_port = http.servers[0].sockets[0].getsockname()[1] if http.servers else settings.http_port
    logger.info(
        "danet-serve listening: http=%s:%s grpc=%s",
        settings.host,
        http_port,
        f"{settings.host}:{grpc_port}" if grpc_port is not None else "off",
        extra={"http_port": http_port, "grpc_port": grpc_port},
    )

    stop_wait = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stop_wait, http_task, warm_task}, return_when=asyncio.FIRST_COMPLETED)
    if warm_task in done and warm_task.exception() is None:
        done, _ = await asyncio.wait({stop_wait, http_task}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if warm_task.done() and not warm_task.cancelled() and warm_task.exception() is not None:
        logger.error("warm-up failed: %s", warm_task.exception())
        status = 1
    logger.info("shutting down: finishing in-flight requests (grace %.0f s)", settings.shutdown_grace_s)
    warm_task.cancel()
    http.should_exit = True  # uvicorn closes its sockets, then waits for open requests
    stops = [http_task]
    if grpc_server is not None:
        from server.grpc.server import stop_grpc_server

        # NOT_SERVING first, so health watchers end instead of holding the grace period open.
        stops.append(asyncio.create_task(stop_grpc_server(grpc_server, settings.shutdown_grace_s)))
    await asyncio.gather(*stops, return_exceptions=True)
    await engine.close()  # nothing new can arrive now; queued work finishes first
    stop_wait.cancel()
    logger.info("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
