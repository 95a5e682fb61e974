"""FastAPI dependencies: settings, the tagger, API keys, window and model parameters."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Query, Request

from service.core.pipeline import WindowSpec
from service.core.tagger import Tagger
from service.errors import ApiError
from service.settings import Settings


def settings_of(request: Request) -> Settings:
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
    """The key a client sent as ``Authorization: Bearer KEY`` or ``X-API-Key``."""
    auth = headers.get("authorization", "") or ""
    sent = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return sent or headers.get("x-api-key", "") or ""


def require_api_key(request: Request) -> None:
    """401 unless a configured key is sent as ``Authorization: Bearer`` or ``X-API-Key``."""
    keys = settings_of(request).api_key_list
    if not keys:
        return
    sent = sent_key(request.headers)
    if not key_matches(sent, keys):
        message = "wrong API key" if sent else "missing API key: send 'Authorization: Bearer KEY'"
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def is_authenticated(request: Request) -> bool:
    """True when no keys are configured or the request carries a good one."""
    keys = settings_of(request).api_key_list
    return not keys or key_matches(sent_key(request.headers), keys)


def window_params(
    window_s: Annotated[float | None, Query(gt=0, le=60, description="default: card's")] = None,
    hop_s: Annotated[float | None, Query(gt=0, le=60, description="default: window_s")] = None,
    pad: Annotated[bool, Query(description="zero-pad the last window")] = True,
) -> WindowSpec:
    return WindowSpec(window_s, hop_s, pad)


WindowDep = Annotated[WindowSpec, Depends(window_params)]
ModelParam = Annotated[
    str | None, Query(max_length=200, description="model name (or a form field `model`)")
]
TaggerDep = Annotated[Tagger, Depends(tagger_of)]
