"""GET /: the page (static files in service/web, no CDN: it works offline)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import ApiError

router = APIRouter(include_in_schema=False)

TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page talks only to this service; no inline scripts, nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; worker-src 'self' blob:"
)


def _file(name: str) -> Response:
    if name not in TYPES:
        raise ApiError(404, "not_found", f"no page file {name!r}")
    data = resources.files("service").joinpath("web", name).read_bytes()
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
    return Response(data, media_type=TYPES[name], headers=headers)


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get("/web/{name}")
async def asset(name: str) -> Response:
    return _file(name)
