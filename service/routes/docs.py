"""OpenAPI pieces shared by the routes: error responses (with examples) and the upload body."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.types import DecoratedCallable
from pydantic import BaseModel

from service.queries import openapi_parameters
from service.schemas import ErrorResponse

# status -> (what it means, an example code and message); every body is an ErrorResponse.
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: (
        "The audio or the multipart body cannot be used",
        "invalid_audio",
        "the file declares 0 channels",
    ),
    401: (
        "Missing or wrong API key (only when the server sets PANNS_API_KEYS)",
        "unauthorized",
        "missing API key: send 'Authorization: Bearer KEY'",
    ),
    404: ("Unknown model", "unknown_model", "no model named 'nope'; served: cnn14"),
    408: (
        "The request body did not arrive in time (PANNS_UPLOAD_TIMEOUT_S, PANNS_IDLE_TIMEOUT_S)",
        "upload_timeout",
        "the request body did not arrive in time (a pause over 15 s)",
    ),
    413: (
        "Upload, duration or work over the limits (PANNS_MAX_UPLOAD_MB, PANNS_MAX_AUDIO_S, ...)",
        "upload_too_large",
        "the request body exceeds 52428800 bytes",
    ),
    415: (
        "Unsupported audio format or request content type",
        "unsupported_format",
        "unrecognised audio format: send WAV, FLAC, Ogg Vorbis/Opus or MP3",
    ),
    422: (
        "Invalid parameters (the message names each one)",
        "invalid_parameters",
        "top_k: Input should be less than or equal to 1000",
    ),
    500: ("Internal error (details in the server log)", "internal_error", "internal server error"),
    503: (
        "Not ready, queue full or shutting down; retry after `Retry-After` seconds",
        "overloaded",
        "the queue is full; retry later",
    ),
    504: (
        "Not done within the deadline (PANNS_TIMEOUT_S)",
        "timeout",
        "not done within the deadline of 60 s (PANNS_TIMEOUT_S)",
    ),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the given error statuses: the ErrorResponse schema and an example."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, code, message = _ERRORS[status]
        example = {"error": {"code": code, "message": message}}
        out[status] = {
            "model": ErrorResponse,
            "description": description,
            "content": {"application/json": {"example": example}},
        }
    return out


# Every route behind the API key (the router adds these to each of its routes).
PROTECTED = error_responses(401, 500)
# The upload endpoints (tag, embed, detect).
ERRORS = error_responses(400, 404, 408, 413, 415, 422, 503, 504)

# The body is streamed and parsed by service.upload (hard size limit), not by FastAPI, so its
# schema is declared here for /docs.
UPLOAD: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more audio files: WAV, FLAC, Ogg, MP3",
                        },
                        "model": {
                            "type": "string",
                            "description": "model name (instead of the `model` query parameter)",
                        },
                    },
                }
            },
            "audio/*": {
                "schema": {"type": "string", "format": "binary", "description": "one file"},
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "raw PCM samples: set sample_rate, channels and dtype",
                },
            },
        },
    }
}


def upload_post(
    router: APIRouter, path: str, response_model: type[BaseModel], query: type[BaseModel]
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """An upload route's ``POST``: its response, its errors (``ERRORS``), its body
    (``UPLOAD``) and its query model's parameters in the OpenAPI document (``service.queries``:
    parsed by one dependency, so FastAPI would list none)."""
    return router.post(
        path,
        response_model=response_model,
        responses=ERRORS,
        openapi_extra={**UPLOAD, "parameters": openapi_parameters(query)},
    )
