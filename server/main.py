"""``danet-serve``: REST (uvicorn) and gRPC in one process and one event loop over one Engine.

Start-up: settings -> logging -> load models (a bad model file is a clear message and exit status 1, not a
traceback) -> start HTTP and gRPC -> warm up (``/readyz`` turns 200 afterwards). SIGTERM/SIGINT: report
not-ready, stop accepting, let in-flight requests finish (``shutdown_grace_s``), drain the engine, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from server import __version__
from server.engine import Engine
from server.errors import ModelLoadError
from server.http.app import create_app
from server.http.protocol import guarded_protocol
from server.logging import configure_logging
from server.settings import Settings

logger = logging.getLogger("server.main")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: ``serve()`` below owns SIGTERM for HTTP and gRPC together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danet-serve",
        description="Serve DANet segmentation models (ONNX) over REST and gRPC. "
        "Every option can also be set with a DANET_<OPTION> environment variable.",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"danet-serve {__version__}")
    add("--host", help="interface to bind (default 0.0.0.0)")
    add("--http-port", type=int, help="HTTP port (default 8000; 0 = any free port)")
    add("--grpc-port", type=int, help="gRPC port (default 8001; 0 = any free port; -1 = no gRPC)")
    add("--model", dest="models", action="append", metavar="PATH", help="ONNX file or directory (repeatable)")
    add("--default-model", help="model used when a request names none")
    add("--model-repository", metavar="DIR", help="Triton-style repository DIR/<name>/<version>/model.onnx")
    add(
        "--model-control-mode",
        choices=["none", "explicit", "poll"],
        help="none = load at start only (default); explicit = load/unload through the repository API; "
        "poll = re-scan the repository every --repository-poll-s seconds",
    )
    add(
        "--load-model",
        dest="load_models",
        action="append",
        metavar="NAME",
        help="model to load at start in explicit mode (repeatable; '*' = all)",
    )
    add("--repository-poll-s", type=float, metavar="SECONDS", help="seconds between scans in poll mode (15)")
    add("--version-policy", metavar="POLICY", help="latest:N (default latest:1), all, or specific:1,3")
    add("--api-key", help="require this API key (Authorization: Bearer or X-API-Key)")
    add(
        "--provider",
        dest="providers",
        action="append",
        metavar="NAME",
        help="onnxruntime execution provider, in priority order (repeatable)",
    )
    add("--require-gpu", action="store_const", const=True, help="refuse to start without a GPU provider")
    add("--workers", type=int, help="inference threads per model")
    add("--batching", choices=["auto", "on", "off"], help="dynamic batching (auto = on for GPU providers)")
    add("--max-batch-size", type=int, help="largest dynamic batch")
    add("--batch-delay-ms", type=float, help="how long a batch waits for more requests")
    add("--max-queue", type=int, help="queued requests per model before 503")
    add("--max-upload-bytes", type=int, help="largest request body")
    add("--max-pixels", type=int, help="largest image (width x height)")
    add("--max-inference-size", type=int, help="longest side used for inference")
    add(
        "--warmup-size",
        dest="warmup_sizes",
        action="append",
        metavar="HxW",
        help="shape bucket to warm up (repeatable; 'preferred' = the model's size)",
    )
    add("--intra-op-threads", type=int, help="onnxruntime intra-op threads")
    add("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN", help="allowed CORS origin")
    add("--log-format", choices=["json", "text"], help="log format (default json)")
    add("--log-level", help="log level (default INFO)")
    return parser


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"danet-serve: invalid configuration: {problems}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(serve(settings))
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        print(f"danet-serve: error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    except KeyboardInterrupt:
        return 130


async def serve(settings: Settings) -> int:
    engine = Engine(settings)
    await engine.load()
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

        grpc_server, grpc_port = create_grpc_server(settings, engine)
        await grpc_server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http_task = asyncio.create_task(http.serve(), name="http")
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
