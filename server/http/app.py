"""``create_app(settings, engine)``: the FastAPI application over one shared Engine.

The app does not own the engine's lifecycle: ``server.main`` (or a test) loads and closes it, so the
same engine can serve the gRPC adapter in the same process.
"""

from __future__ import annotations

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from server import __version__
from server.engine import Engine
from server.http import kserve
from server.http.disconnect import CancelOnDisconnect
from server.http.errors import install_error_handlers
from server.http.middleware import ServiceMiddleware
from server.http.routes import segment, service, ui
from server.http.strict import STRICT_QUERY
from server.segmentation import Segmenter
from server.settings import Settings

DESCRIPTION = """DANet scene segmentation over onnxruntime.

`POST /segment` with an image (multipart field `image` or the raw body) returns a colour, index or overlay
PNG of the input's size, or JSON statistics. KServe v2 / Open Inference Protocol under `/v2`.
When an API key is configured, send `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="danet-serve",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # served below from the packaged Swagger UI: no CDN, works offline
        redoc_url=None,
        dependencies=[STRICT_QUERY],  # an unknown query parameter is a 422 on routes that take options
    )
    _install_offline_docs(app)
    app.state.settings = settings
    app.state.engine = engine
    app.state.segmenter = Segmenter(engine)
    install_error_handlers(app)
    app.include_router(ui.build_router())
    app.include_router(segment.router)
    app.include_router(service.router)
    app.include_router(kserve.router)
    app.add_middleware(ServiceMiddleware, settings=settings, metrics=engine.metrics)
    app.add_middleware(CancelOnDisconnect)  # outside the service middleware: its access log sees the 499
    if settings.cors_origins:
        # added last = outermost: preflight requests are answered before authentication
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "Accept"],
            expose_headers=[
                "X-Request-ID",
                "X-Danet-Provider",
                "X-Danet-Model",
                "X-Danet-Model-Version",
                "X-Danet-Inference-Ms",
                "X-Danet-Replica",
            ],
        )
    return app


DOCS_ASSETS = "/docs/assets"


def _install_offline_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI from the ``swagger-ui-bundle`` package instead of FastAPI's default CDN."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )
