"""ASGI guards in front of the app: limits that hold for every door (HTTP and WebSocket)."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send


class HeaderLimit:
    """431 for a request whose headers add up to more than ``max_bytes``.

    uvicorn's h11 bound (``h11_max_incomplete_event_size``) stops a head that never ends;
    this catches one that arrived whole in a single read, under any server."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            if size > self.max_bytes:
                await self._refuse(scope, send, size)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, size: int) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "headers too large"})
            return
        message = f"the request headers hold {size} bytes: at most {self.max_bytes} are accepted"
        body = orjson.dumps({"error": {"code": "headers_too_large", "message": message}})
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})
