"""HTTP errors: the one table from domain errors to statuses, and the JSON error handlers.

Every error body is ``{"error": {"code", "message"}}`` (plus ``files`` when several uploads
failed), never a stack trace. The core raises domain errors (``service.core.errors``, audio
and batcher errors); this module alone decides which status each one gets.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.audiocheck import AudioError
from service.core.errors import (
    BatcherStopped,
    DeadlineExceeded,
    EngineUnavailable,
    InvalidParameters,
    MissingOutput,
    NotReady,
    QueueFull,
    TaggingError,
    TimedOut,
    TooManyWindows,
    TooMuchWork,
    UnknownModel,
)
from service.oip import HeaderTooLarge, ProtocolError

log = logging.getLogger("service.errors")

# Domain error class -> HTTP status (the first class in an exception's MRO that is listed).
STATUS: dict[type[Exception], int] = {
    InvalidParameters: 422,
    MissingOutput: 422,
    UnknownModel: 404,
    NotReady: 503,
    TooMuchWork: 413,
    TooManyWindows: 413,
    TimedOut: 504,
    DeadlineExceeded: 504,
    QueueFull: 503,
    BatcherStopped: 503,
    AudioError: 400,
    EngineUnavailable: 503,
    HeaderTooLarge: 413,
    ProtocolError: 400,
}
# Audio error codes whose status is not 400.
AUDIO_STATUS = {"unsupported_format": 415, "audio_too_long": 413}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameters",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error answered to the client as-is: status, machine code, human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra or {}


def status_of(exc: Exception) -> int:
    """The HTTP status of a domain error (500 for anything unknown)."""
    if isinstance(exc, AudioError):
        return AUDIO_STATUS.get(exc.code, 400)
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def code_of(exc: Exception) -> str:
    return str(getattr(exc, "code", "internal_error"))


def message_of(exc: Exception) -> str:
    if isinstance(exc, QueueFull):
        return "the queue is full; retry later"
    return str(getattr(exc, "message", None) or exc)


def headers_of(exc: Exception) -> dict[str, str]:
    if isinstance(exc, QueueFull):
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, NotReady):
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, BatcherStopped | EngineUnavailable):
        return {"Retry-After": "5"}
    return {}


def to_api_error(exc: Exception) -> ApiError:
    """The HTTP answer for a domain error."""
    return ApiError(status_of(exc), code_of(exc), message_of(exc), headers_of(exc))


DOMAIN_ERRORS: tuple[type[Exception], ...] = (
    TaggingError,
    QueueFull,
    DeadlineExceeded,
    BatcherStopped,
    TooManyWindows,
)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(err: ApiError) -> JSONResponse:
    body = error_body(err.code, err.message, **err.extra)
    return JSONResponse(body, err.status, headers=err.headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or "invalid parameters"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(to_api_error(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body("invalid_parameters", _describe_validation(exc)), 422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    for cls in DOMAIN_ERRORS:
        app.add_exception_handler(cls, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
