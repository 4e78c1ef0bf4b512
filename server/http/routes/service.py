"""Service endpoints: liveness, readiness, model list, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.http.deps import EngineDep
from server.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["service"])


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: models loaded and warmed up",
    responses={503: {"description": "still loading / warming up, or shutting down"}},
)
async def readyz(request: Request, engine: EngineDep) -> JSONResponse:
    # readiness for everyone (orchestrators probe without a key); models and providers for key holders
    status = engine.describe() if getattr(request.state, "authenticated", True) else {"ready": engine.ready}
    if engine.ready:
        return JSONResponse({"status": "ready", **status})
    reason = "shutting down" if engine.closing else ("warming up" if engine.loaded else "loading models")
    body: dict[str, Any] = {
        "status": "not ready",
        **status,
        "error": {"code": "not_ready", "message": f"not ready: {reason}"},
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@router.get("/v1/models", summary="Served models (newest version; `versions` lists every ready one)")
async def list_models(engine: EngineDep) -> dict[str, Any]:
    default = engine.default_model
    return {
        "models": [
            {
                **info.to_dict(),
                "versions": [v.version for v in engine.versions(info.name)],
                "default": info.name == default,
            }
            for info in engine.list_models()
        ]
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(engine: EngineDep) -> Response:
    return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)
