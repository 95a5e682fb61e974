"""Structured (JSON) logging and the access-log middleware with X-Request-ID."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import UNCOUNTED_PATHS, Metrics, is_inference

access_log = logging.getLogger("service.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def iso_time(created: float) -> str:
    """ISO 8601 in UTC with milliseconds and the offset: ``2026-12-01T23:06:13.123+00:00``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


def _path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class AccessLogMiddleware:
    """Request id in and out, one JSON access line per request, request count and latency.

    Probes and scrapes (``UNCOUNTED_PATHS``) are logged at debug level and not counted; only
    inference requests count as in flight, so a scrape never sees itself.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        status, started = 500, time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        path = _path(scope)
        inflight = self.metrics.inflight if is_inference(path) else None
        if inflight is not None:
            inflight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if inflight is not None:
                inflight.dec()
            self._record(scope, path, rid, status, time.perf_counter() - started)

    def _record(self, scope: Scope, path: str, rid: str, status: int, seconds: float) -> None:
        state = scope.get("state", {})
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        model = state.get("model", "")
        probe = path in UNCOUNTED_PATHS
        if not probe:
            self.metrics.request_done(endpoint, model, status, seconds)
        client = scope.get("client") or ("", 0)
        access_log.log(
            logging.DEBUG if probe else logging.INFO,
            "request",
            extra={
                "fields": {
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "model": model,
                    "client": client[0],
                    "endpoint": endpoint,
                }
            },
        )
