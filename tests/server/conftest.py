"""Fixtures for server tests: in-process apps over a started Engine, and a real danet-serve subprocess."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.server_proc import ServerProcess
from server.engine import Engine
from server.http.app import create_app
from server.settings import Settings
from tests.conftest import server_process

CPU_ONLY = ["CPUExecutionProvider"]


def make_settings(models: list[Path], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models": models,
        "providers": CPU_ONLY,
        "warmup_sizes": ["32x32"],
        "log_format": "text",
        "access_log": False,
        "grpc_port": -1,
        # references are computed at the upload's size; tests of the preferred-size policy turn it on
        "infer_at_preferred_size": False,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_app(settings: Settings, *, start: bool = True) -> Iterator[tuple[TestClient, Engine]]:
    engine = Engine(settings)
    if start:
        asyncio.run(engine.start())
    app = create_app(settings, engine)
    try:
        with TestClient(app) as client:
            yield client, engine
    finally:
        asyncio.run(engine.close())


AppFactory = Callable[..., Any]


@pytest.fixture
def app_factory(tiny_onnx: Path) -> Iterator[AppFactory]:
    """``app_factory(**settings_overrides)`` -> (TestClient, Engine), closed at teardown."""
    stack: list[Any] = []

    def build(
        *, models: list[Path] | None = None, start: bool = True, **overrides: Any
    ) -> tuple[TestClient, Engine]:
        ctx = running_app(make_settings([tiny_onnx] if models is None else models, **overrides), start=start)
        stack.append(ctx)
        return ctx.__enter__()

    yield build
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(tiny_onnx: Path, tiny_onnx_no_logits: Path) -> Iterator[TestClient]:
    """A ready app serving ``tiny`` (default, with logits) and ``plain`` (no logits)."""
    with running_app(make_settings([tiny_onnx, tiny_onnx_no_logits])) as (test_client, _):
        yield test_client


@pytest.fixture(scope="session")
def live_server(tiny_onnx: Path) -> Iterator[ServerProcess]:
    """A real ``danet-serve`` process (HTTP + gRPC) serving the tiny model."""
    server = server_process([tiny_onnx]).start()
    yield server
    server.stop()
