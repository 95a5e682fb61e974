"""What both ways of tagging share: the request parameters, the record shape, fatal errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.core.results import Aggregate

Json = dict[str, Any]


class FatalError(Exception):
    """Stops the whole run: no later file could succeed (wrong URL, key, model, parameters)."""


@dataclass(frozen=True)
class TagParams:
    """What is asked of every file: the REST ``/v1/tag`` query parameters."""

    model: str | None = None
    top_k: int = 10
    threshold: float | None = None
    aggregate: Aggregate = "max"
    window_s: float | None = None
    hop_s: float | None = None
    scores: bool = True

    def query(self) -> dict[str, str]:
        """The query string of ``POST /v1/tag`` (unset values left to the server)."""
        values: dict[str, Any] = {
            "model": self.model,
            "top_k": self.top_k,
            "threshold": self.threshold,
            "aggregate": self.aggregate,
            "window_s": self.window_s,
            "hop_s": self.hop_s,
            "scores": "true" if self.scores else "false",
        }
        return {k: str(v) for k, v in values.items() if v is not None}


class FileTagger(Protocol):
    """Tags one file's bytes; always returns a record (an error record when it failed).

    Raises ``FatalError`` only when no file could succeed."""

    async def tag(self, path: Path, data: bytes) -> Json: ...


def record(path: Path, result: Json) -> Json:
    """One output line: ``path`` then the REST result's fields."""
    return {"path": str(path), **result}


def error_record(path: Path, code: str, message: str) -> Json:
    """A failed file, in the shape of a REST result whose ``error`` is set."""
    return record(
        path,
        {
            "filename": path.name,
            "duration_s": None,
            "metrics": None,
            "error": {"code": code, "message": message},
            "scores": None,
            "top": None,
            "windows": None,
        },
    )
