"""FastAPI dependencies: settings, the tagger, API keys, window and model parameters.

Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a thread hand-off (and GIL ping-pong) per dependency per request for a few dict lookups."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from service.core.pipeline import WindowSpec
from service.core.tagger import Tagger
from service.errors import ApiError
from service.settings import Settings


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
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
ApiKeyDep = Annotated[str | None, Security(API_KEY)]


def _sent(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str:
    return (bearer.credentials if bearer else "") or api_key or ""


async def require_api_key(request: Request, bearer: BearerDep, api_key: ApiKeyDep) -> None:
    """401 unless a configured key is sent as ``Authorization: Bearer`` or ``X-API-Key``.

    The two security schemes parse the headers and declare them in the OpenAPI document."""
    keys = settings_of(request).api_key_list
    if not keys:
        return
    sent = _sent(bearer, api_key)
    if not key_matches(sent, keys):
        message = "wrong API key" if sent else "missing API key: send 'Authorization: Bearer KEY'"
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


async def is_authenticated(conn: HTTPConnection) -> bool:
    """True when no keys are configured or the request carries a good one."""
    keys = settings_of(conn).api_key_list
    return not keys or key_matches(sent_key(conn.headers), keys)


async def window_params(
    window_s: Annotated[float | None, Query(gt=0, le=60, description="default: card's")] = None,
    hop_s: Annotated[float | None, Query(gt=0, le=60, description="default: window_s")] = None,
    pad: Annotated[bool, Query(description="zero-pad the last window")] = True,
) -> WindowSpec:
    return WindowSpec(window_s, hop_s, pad)


WindowDep = Annotated[WindowSpec, Depends(window_params)]
ModelParam = Annotated[
    str | None, Query(max_length=200, description="model name (or a form field `model`)")
]


async def _tagger(request: Request) -> Tagger:
    return tagger_of(request)


TaggerDep = Annotated[Tagger, Depends(_tagger)]
