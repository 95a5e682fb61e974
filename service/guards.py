"""Guards in front of the app: limits that hold for every door (HTTP and WebSocket).

``BoundedHttpTools`` is the server's HTTP protocol: uvicorn's httptools (C) parser, which
costs a fraction of h11's pure-Python parsing and body copies per upload, with the bound on
a request head that httptools lacks, handing the body over without uvicorn's two copies.
``HeaderLimit`` checks a head that arrived whole. ``ReleaseAfterLargeBodies`` gives the
memory of a large upload back to the OS once its request is done.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.heap import LARGE_REQUEST_BYTES, release_memory
from service.errors import error_body

HEAD_TOO_LARGE = "headers_too_large"


def _head_refusal(limit: int) -> bytes:
    message = f"the request line and headers exceed {limit} bytes"
    body = orjson.dumps(error_body(HEAD_TOO_LARGE, message))
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class _Chunks:
    """A request body's chunks between two ``receive`` calls, kept as httptools made them.

    uvicorn collects them in a bytearray (``+=``: a copy) and converts that to bytes for the
    app (another copy): two copies of every upload on the event loop. ``bytes()`` of this
    gives the one chunk itself, or one join of several."""

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0

    def __iadd__(self, data: bytes) -> _Chunks:
        self.pieces.append(data)
        self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)


class BoundedHttpTools(HttpToolsProtocol):
    """httptools, refusing (431, then close) a request head that grows past
    ``max_head_bytes`` before it ends: httptools itself would buffer a header that never
    ends without limit. Bytes are counted per read while the head is incomplete, so the
    bound holds within one read (256 KiB) of the limit."""

    max_head_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = None  # bytes read while a head is incomplete

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_bytes is None or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self.transport.write(_head_refusal(self.max_head_bytes))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle.body) is bytearray and not cycle.body:  # uvicorn's fresh, empty buffer
            cycle.body = _Chunks()  # type: ignore[assignment]  # read only by += len bytes()
        super().on_body(body)


def bounded_http(max_head_bytes: int) -> type[BoundedHttpTools]:
    """The protocol class uvicorn instantiates, with this server's head limit."""
    return type("BoundedHttpTools", (BoundedHttpTools,), {"max_head_bytes": max_head_bytes})


class HeaderLimit:
    """431 for a request whose headers add up to more than ``max_bytes``.

    ``BoundedHttpTools`` stops a head that never ends; this catches one that arrived whole
    in a single read, under any server."""

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
        body = orjson.dumps(error_body(HEAD_TOO_LARGE, message))
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ReleaseAfterLargeBodies:
    """Trim the C heap once a request whose body passed ``LARGE_REQUEST_BYTES`` is done.

    Server processes keep smaller buffers in the heap for reuse (``service.core.heap``), so
    the chunks of a 200 MB upload would otherwise stay resident after it, whatever became
    of the request (refused, failed or answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            if received > LARGE_REQUEST_BYTES:  # malloc_trim walks the heap: not on the loop
                asyncio.get_running_loop().run_in_executor(None, release_memory)
