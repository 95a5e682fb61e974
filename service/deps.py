"""FastAPI dependencies: settings, the tagger, API keys, window and model parameters.

Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a thread hand-off (and GIL ping-pong) per dependency per request for a few dict lookups."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection

from service.core.tagger import Tagger
from service.errors import ApiError
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)


def settings_of(request: HTTPConnection) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def tagger_of(request: Request) -> Tagger:
    tagger: Tagger = request.app.state.tagger
    return tagger


def key_matches(sent: str, keys: list[str]) -> bool:
    """Compare against every key, so the time taken reveals nothing."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sent.encode(), key.encode())
    return matched


def sent_key(headers: Mapping[str, str]) -> str:
    """The key sent as ``Authorization: Bearer KEY`` or ``X-API-Key`` (WebSocket handshakes)."""
    auth = headers.get("authorization", "") or ""
    sent = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return sent or headers.get("x-api-key", "") or ""


# The two ways to send a key, as the OpenAPI document declares them (``routes.apidocs``);
# ``require_api_key`` reads the headers itself (``sent_key``).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="`Authorization: Bearer KEY`, KEY one of the server's PANNS_API_KEYS",
)
API_KEY = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKeyHeader",
    description="`X-API-Key: KEY`, KEY one of the server's PANNS_API_KEYS",
)
KEY_SCHEMES = (BEARER, API_KEY)


async def require_api_key(request: Request) -> None:
    """401 unless a configured key is sent as ``Authorization: Bearer`` or ``X-API-Key``.

    Reads the two headers itself: as FastAPI ``Security`` dependencies, the schemes took
    three dependency resolutions per request (~0.2 ms of a front's ~3 ms per clip). The
    routes behind it declare them in the OpenAPI document (``declare_key_schemes``)."""
    keys = settings_of(request).api_key_list
    if not keys:
        return
    sent = sent_key(request.headers)
    if not key_matches(sent, keys):
        message = "wrong API key" if sent else "missing API key: send 'Authorization: Bearer KEY'"
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def declare_key_schemes(router: APIRouter) -> APIRouter:
    """Mark ``router``'s routes as needing a key in the OpenAPI document (the app includes
    it behind ``require_api_key``; ``routes.apidocs`` drops the marks when the server has no
    keys). Idempotent: a module's router serves every app made in a process."""
    security: list[dict[str, list[str]]] = [{s.scheme_name: []} for s in KEY_SCHEMES]
    for route in router.routes:
        if isinstance(route, APIRoute):
            route.openapi_extra = {**(route.openapi_extra or {}), "security": security}
    return router


def key_schemes_openapi() -> dict[str, Any]:
    """The document's ``components.securitySchemes`` for the two ways to send a key."""
    return {
        scheme.scheme_name: scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        for scheme in KEY_SCHEMES
    }


async def is_authenticated(conn: HTTPConnection) -> bool:
    """True when no keys are configured or the request carries a good one."""
    keys = settings_of(conn).api_key_list
    return not keys or key_matches(sent_key(conn.headers), keys)


ModelParam = Annotated[
    str | None, Query(max_length=200, description="model name (or a form field `model`)")
]


def query_params(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency that validates the whole query string against ``model`` at once
    (``service.queries``: one step instead of one per declared parameter); a bad value is
    the same ``RequestValidationError`` FastAPI raises, located at ``query.<name>``."""

    async def parse(request: Request) -> M:
        try:
            return model.model_validate(dict(request.query_params))
        except ValidationError as exc:
            errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from None

    return parse


async def _tagger(request: Request) -> Tagger:
    return tagger_of(request)


TaggerDep = Annotated[Tagger, Depends(_tagger)]
