"""GET /openapi.json, /docs (Swagger UI), /redoc (ReDoc) and their assets, served offline.

The pages embed the OpenAPI document and load their scripts and styles from this server
(the files ship in the ``fastapi-offline`` package), never from a CDN. With API keys set,
the document and the pages need a key unless ``PANNS_PUBLIC_DOCS=true``; the assets (the
stock Swagger UI and ReDoc files) are always public.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from service.deps import key_schemes_openapi, require_api_key
from service.errors import ApiError

ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
ASSET_DIR = Path(str(importlib.resources.files("fastapi_offline") / "static"))

_SWAGGER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - Swagger UI</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/static/favicon.png"></head>
<body><div id="swagger-ui"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({{spec: {spec}, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout"}});
</script></body></html>
"""

_REDOC = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - ReDoc</title>
<link rel="icon" type="image/png" href="docs/static/favicon.png"></head>
<body><div id="redoc"></div>
<script src="docs/static/redoc.standalone.js"></script>
<script>Redoc.init({spec}, {{}}, document.getElementById("redoc"));</script>
</body></html>
"""


def _settle_security(doc: dict[str, Any], keys_required: bool) -> None:
    """Say for every operation whether it needs a key (``security: []``: it does not).

    Without keys configured no operation needs one and none answers 401."""
    if keys_required:
        doc.setdefault("components", {})["securitySchemes"] = key_schemes_openapi()
    for path in doc["paths"].values():
        for operation in path.values():
            if not keys_required:
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
            operation.setdefault("security", [])


def install_openapi(app: FastAPI, keys_required: bool) -> None:
    """FastAPI's document, without the security schemes when the server has no keys."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                license_info={"name": "MIT", "identifier": "MIT"},
                servers=[{"url": "/", "description": "this server"}],
            )
            _settle_security(doc, keys_required)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _inline_json(doc: dict[str, Any]) -> str:
    """JSON safe inside a <script> element (no ``</script>`` or ``<!--`` can appear)."""
    return json.dumps(doc).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(template: str, app: FastAPI) -> HTMLResponse:
    """The page, rendered once per app and kept in ``app.state.doc_pages``.

    It embeds the whole OpenAPI document (tens of kB of escaped JSON), which does not change
    once the app is built; it is rendered again only if ``app.openapi()`` returns another
    document (``app.openapi_schema`` reset)."""
    doc = app.openapi()
    pages: dict[str, tuple[dict[str, Any], bytes]] | None = getattr(app.state, "doc_pages", None)
    if pages is None:
        pages = app.state.doc_pages = {}
    rendered = pages.get(template)
    if rendered is None or rendered[0] is not doc:
        html = template.format(title=app.title, spec=_inline_json(doc))
        rendered = pages[template] = (doc, html.encode())
    return HTMLResponse(rendered[1], headers={"Cache-Control": "no-store"})


def pages_router(public: bool) -> APIRouter:
    """The document and the pages; behind the API key unless ``public``."""
    router = APIRouter(
        include_in_schema=False, dependencies=[] if public else [Depends(require_api_key)]
    )

    @router.get("/openapi.json")
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _page(_SWAGGER, request.app)

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        return _page(_REDOC, request.app)

    return router


assets_router = APIRouter(include_in_schema=False)


@assets_router.get("/docs/static/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no asset named {name!r}")
    return FileResponse(
        ASSET_DIR / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
