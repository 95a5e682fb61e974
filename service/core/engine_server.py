"""The engine process's side of the wire: ``EngineServer`` serves its batchers to fronts.

Each front connects once and passes its shared-memory arena (``service.core.handoff``); the
engine passes back an answer arena of its own. Then the front sends framed requests
(``service.core.wire``): a hello, answered once the models have loaded; submits, whose
windows go to the model's batcher and whose outputs go back (large ones in the answer
arena, ``Answers``); and frees of the answers it has copied out of that arena.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from functools import partial
from typing import Any

import numpy as np

from service.core.batch import WindowResult
from service.core.handoff import (
    Arena,
    joined,
    packed,
    packed_into,
    receive_arena,
    send_arena,
    windows_at,
)
from service.core.models import Models
from service.core.wire import Frames, encode_results, error_header, receive

log = logging.getLogger("service.core.engine_server")
MAX_KINDS = 8  # a model has at most a few output kinds (clipwise, embedding, framewise)
ANSWER_ARENA_BYTES = 64 << 20  # per front: 30 windows of frame scores (1001 x 527) at once
ANSWER_ARENA_MIN = 64 << 10  # smaller answers (label scores: 2 kB a window) use the socket


class Answers:
    """One front's answers on their way out: large ones through the engine's answer arena
    (shared with that front alone), lent until the front frees them; the rest, and any
    that find the arena full, through the socket."""

    def __init__(self, frames: Frames, arena: Arena | None) -> None:
        self.frames, self.arena = frames, arena
        self.lent: dict[int, np.ndarray] = {}  # byte offset -> the extent the front reads

    def post(self, header: dict[str, Any], parts: list[np.ndarray]) -> None:
        arena = self.arena
        block = None
        if arena is not None and sum(p.nbytes for p in parts) > ANSWER_ARENA_MIN:
            block = packed_into(arena, parts)
        at = None if arena is None or block is None else arena.offset_of(block)
        if block is None or at is None:
            self.frames.post(header, joined(parts))
            return
        self.lent[at] = block
        self.frames.post({**header, "at": at, "floats": int(block.size)})

    def free(self, header: dict[str, Any]) -> None:
        """The front has copied an answer out: its extent returns to the arena (an offset
        that is not lent, or none, changes nothing)."""
        with contextlib.suppress(TypeError, ValueError):
            self.lent.pop(int(header.get("at", -1)), None)

    def close(self) -> None:
        self.lent.clear()  # the front is gone: nobody reads them
        if self.arena is not None:
            self.arena.close()


def _answer(
    rid: int,
    answers: Answers,
    pending: dict[int, asyncio.Future[list[WindowResult]]],
    kinds: frozenset[str] | None,
    future: asyncio.Future[list[WindowResult]],
) -> None:
    """A submit's answer, once its future is done: the outputs of ``kinds`` only (what the
    front's task reads: a decision-level model's frame scores, 2.1 MB per window, never
    cross to the front for /v1/tag). A cancelled one is answered too, which lets the front
    reuse its arena extent (a batch already cut may still read it, which changes only this
    request's discarded rows: see ``handoff``)."""
    pending.pop(rid, None)
    frames = answers.frames
    if frames.is_closing():
        return
    if future.cancelled():
        frames.post({"id": rid, "ok": False, "error": "cancelled"})
    elif (exc := future.exception()) is not None:
        frames.post(error_header(rid, exc))
    else:
        try:  # a callback's exception would only be logged: the front would wait in vain
            answers.post(*encode_results(rid, future.result(), kinds))
        except Exception as failure:  # e.g. MemoryError joining a huge answer
            log.exception("answering submit %d failed", rid)
            frames.post(error_header(rid, failure))


class EngineServer:
    """Serves the batchers of ``models`` to front processes on a Unix socket."""

    def __init__(self, models: Models, path: str) -> None:
        self.models, self.path = models, path
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(256)
        self._sock.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(self._sock))

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._sock is not None:
            self._sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            task = asyncio.create_task(self._connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _connection(self, conn: socket.socket) -> None:
        """A front's connection: its arena first (fd passing), then framed requests."""
        answers = _answer_arena()
        try:
            arena = await receive_arena(conn)
            send_arena(conn, answers)  # five bytes into an empty socket: never blocks
            reader, writer = await asyncio.open_unix_connection(sock=conn)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("a front's connection failed before its first request: %s", exc)
            conn.close()
            if answers is not None:
                answers.close()
            return
        await self._serve(reader, writer, arena, answers)

    async def _answer_hello(self, rid: int, frames: Frames) -> None:
        """Answered once loading has ended (loaded or failed), not before: every front
        waiting on it turns ready at the same moment, none polls."""
        await self.models.settled.wait()
        with contextlib.suppress(ConnectionError):
            await frames.send({"id": rid, **self._hello()})

    def _hello(self) -> dict[str, Any]:
        if not self.models.ready:
            return {"ok": False, "ready": False, "error": self.models.error}
        info = {
            name: {
                "provider": r.backend.provider,
                "precision": r.backend.precision,
                "device": r.backend.device,
                "kinds": r.backend.kinds,
            }
            for name, r in self.models.models.items()
        }
        return {"ok": True, "ready": True, "models": info}

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        arena: np.ndarray | None,
        answer_arena: Arena | None,
    ) -> None:
        frames = Frames(writer)
        answers = Answers(frames, answer_arena)
        pending: dict[int, asyncio.Future[list[WindowResult]]] = {}  # submits in the batcher
        hellos: set[asyncio.Task[None]] = set()  # waiting for the models to load
        try:
            while True:
                header, payload = await receive(reader)
                rid = int(header.get("id", 0))
                if header.get("op") == "hello":
                    hello = asyncio.create_task(self._answer_hello(rid, frames))
                    hellos.add(hello)
                    hello.add_done_callback(hellos.discard)
                elif header.get("op") == "cancel":
                    future = pending.get(rid)
                    if future is not None:
                        future.cancel()
                elif header.get("op") == "free":
                    answers.free(header)
                else:
                    self._submit(rid, header, _windows(header, payload, arena), answers, pending)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the front went away (or the engine stops): its queued windows are dropped
        finally:
            for future in pending.values():
                future.cancel()
            for hello in hellos:
                hello.cancel()
            frames.close()
            answers.close()

    def _submit(
        self,
        rid: int,
        header: dict[str, Any],
        windows: list[np.ndarray] | Exception,
        answers: Answers,
        pending: dict[int, asyncio.Future[list[WindowResult]]],
    ) -> None:
        """Queue a submit's windows in its model's batcher (no task per submit: the engine's
        one event loop handles every window of every front); answered by ``_answer``."""
        try:
            deadline = time.monotonic() + float(header["deadline_in"])
            if isinstance(windows, Exception):
                raise windows
            kinds = _kinds(header)
            future = self.models.local_batcher(header["model"]).enqueue(windows, deadline)
        except Exception as exc:
            answers.frames.post(error_header(rid, exc))
            return
        pending[rid] = future
        future.add_done_callback(partial(_answer, rid, answers, pending, kinds))


def _answer_arena() -> Arena | None:
    """A new front's answer arena; None (its answers use the socket) where there is no
    ``memfd`` or no room for one (out of file descriptors or memory: not a reason to refuse
    the front)."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        return Arena(ANSWER_ARENA_BYTES)
    except OSError as exc:
        log.warning("no answer arena for a front (%s): its answers use the socket", exc)
        return None


def _kinds(header: dict[str, Any]) -> frozenset[str] | None:
    """The output kinds a submit asks for (None: every kind the model has)."""
    kinds = header.get("kinds")
    if kinds is None:
        return None
    if (
        not isinstance(kinds, list)
        or len(kinds) > MAX_KINDS
        or not all(isinstance(k, str) for k in kinds)
    ):
        raise ValueError(f"kinds must be a list of at most {MAX_KINDS} names, not {kinds!r:.80}")
    return frozenset(kinds)


def _windows(
    header: dict[str, Any], payload: bytes, arena: np.ndarray | None
) -> list[np.ndarray] | Exception:
    """A submit's windows: views of the front's arena, or of the inline payload (an error
    for that request alone when the header is malformed)."""
    try:
        lengths = [int(n) for n in header["lengths"]]
    except (KeyError, TypeError, ValueError) as exc:
        return ValueError(f"a submit without usable window lengths: {exc!r}")
    try:  # a malformed offset (or inline payload) fails this request alone
        if "ats" not in header:
            floats = np.frombuffer(payload, np.float32)
            return windows_at(floats, _inline_offsets(header, lengths), lengths)
        if "inline_ats" in header:
            return ValueError("a submit with both arena and inline offsets")
        if arena is None:
            return ConnectionError("windows in an arena this front never sent")
        return windows_at(arena, [int(at) for at in header["ats"]], lengths)
    except (TypeError, ValueError) as exc:
        return ValueError(f"unusable window offsets: {exc}")


def _inline_offsets(header: dict[str, Any], lengths: list[int]) -> list[int]:
    """Where each window starts in an inline payload: at ``inline_ats`` (overlapping windows
    sent as the span they cover), else end to end."""
    ats = header.get("inline_ats")
    if ats is None:
        return packed(lengths)
    if not isinstance(ats, list):
        raise TypeError(f"inline_ats is a {type(ats).__name__}, not a list")
    return [int(at) for at in ats]
