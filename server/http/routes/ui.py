"""``GET /``: the single-file web page (no CDN; works offline)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


def build_router() -> APIRouter:
    """Read the page once, when the app is built (not at import)."""
    page = resources.files("server.http").joinpath("static/index.html").read_text(encoding="utf-8")
    router = APIRouter(tags=["ui"])

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return router
