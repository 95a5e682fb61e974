"""OpenAPI pieces shared by the upload endpoints."""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}

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
                        }
                    },
                }
            }
        },
    }
}
