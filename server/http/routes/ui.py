"""``GET /``: the single-file web page (no CDN; works offline), and the sample pictures it offers.

The samples are the repository's ``samples/`` folder (procedural street scenes and a photo-like picture,
each with its exact class map). An installation without that folder serves an empty list, and the page
then shows only the upload.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

#: ``samples/`` next to the ``server`` package: the repository root of a clone or an editable install.
SAMPLES_DIR = Path(__file__).resolve().parents[3] / "samples"
_PICTURES = (".jpg", ".jpeg", ".png")
_MAP_SUFFIX = ".labels.png"


def find_samples(folder: Path) -> dict[str, Path]:
    """Sample pictures by file name (their expected maps, ``NAME.labels.png``, are not pictures to segment)."""
    if not folder.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in _PICTURES and not p.name.endswith(_MAP_SUFFIX)
    }


def build_router(samples_dir: Path = SAMPLES_DIR) -> APIRouter:
    """Read the page and list the samples once, when the app is built (not at import)."""
    page = resources.files("server.http").joinpath("static/index.html").read_text(encoding="utf-8")
    samples = find_samples(samples_dir)
    files: dict[str, Path] = dict(samples)
    entries: list[dict[str, str | None]] = []
    for name, path in samples.items():
        expected = path.with_name(path.name.rsplit(".", 1)[0] + _MAP_SUFFIX)
        if expected.is_file():
            files[expected.name] = expected
        labels = f"samples/{expected.name}" if expected.is_file() else None
        entries.append({"name": name, "url": f"samples/{name}", "labels": labels})
    listing = {"samples": entries}
    router = APIRouter(tags=["ui"])

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @router.get("/samples", include_in_schema=False)
    async def sample_list() -> dict[str, list[dict[str, str | None]]]:
        return listing

    @router.get("/samples/{name}", include_in_schema=False)
    async def sample(name: str) -> FileResponse:
        path = files.get(name)  # only the listed files: never a path built from the request
        if path is None:
            raise HTTPException(404, f"no sample named {name!r}; the samples are listed at /samples")
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    return router
