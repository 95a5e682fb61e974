"""One engine process, many front processes: requests travel over a Unix socket.

With ``PANNS_WORKERS`` > 1 the supervisor runs the models (backends and batchers) in one
engine process per device, and N front processes do the HTTP, decoding and windowing. A front
hands each request's windows to the engine (float32 in its shared-memory arena, or raw
float32 inline; no pickles) and gets each window's outputs back, so windows of every front
share the engine's batches and there is one copy of the weights. ``RemoteQueue`` has the
batcher's ``submit`` interface, so the rest of the core does not know where the batcher runs.

Frames: 4-byte little-endian header length, JSON header, then ``header["bytes"]`` bytes.
A submit's windows lie in the front's shared-memory arena (``service.core.handoff``; the
header's ``ats`` say where each starts) unless the arena is full, when they follow the
header inline, end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from service.core.batcher import (
    BatcherStopped,
    DeadlineExceeded,
    QueueFull,
    TooManyWindows,
    WindowResult,
)
from service.core.card import ModelCard, OutputKind, read_card
from service.core.errors import NotReady, TaggingError, UnknownModel
from service.core.handoff import Arena, packed, receive_arena, send_arena, windows_at
from service.core.models import ModelRuntime, Models

log = logging.getLogger("service.core.remote")
_LEN = struct.Struct("<I")
MAX_HEADER = 16 << 20  # a bound against garbage: a submit's header is ~20 bytes per window
ARENA_BYTES = 64 << 20  # per front: 50 windows of 10 s at 32 kHz on their way to the engine
_JOIN_BYTES = 1 << 16  # payloads above this are written on their own
_ENGINE_GRACE_S = 1.0  # past a request's deadline, a front stops waiting for the engine


class Frames:
    """The frames going out on one connection, written once per event-loop turn: the answers
    for a whole batch (or the requests that arrived together) leave in one system call and
    wake the other side once, not once each. A large inline payload is written at once, not
    copied into a joined buffer, and drained."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._out: list[bytes] = []
        self._scheduled = False

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        head = orjson.dumps({**header, "bytes": len(payload)}, option=orjson.OPT_SERIALIZE_NUMPY)
        self._out.append(_LEN.pack(len(head)) + head)
        if len(payload) > _JOIN_BYTES:
            self.flush()
            if not self.writer.is_closing():
                self.writer.write(payload)
            await self.writer.drain()
            return
        if payload:
            self._out.append(payload)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        if self.writer.transport.get_write_buffer_size() > _JOIN_BYTES:
            await self.writer.drain()  # the other side reads slowly: wait for it

    def flush(self) -> None:
        self._scheduled = False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            if not self.writer.is_closing():
                self.writer.write(data)

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        self.flush()
        self.writer.close()


async def receive(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if size > MAX_HEADER:
        raise ConnectionError(f"frame header of {size} bytes")
    header = orjson.loads(await reader.readexactly(size))
    payload = await reader.readexactly(int(header.get("bytes", 0)))
    return header, payload


# The errors an engine can answer a front with, and the arguments that rebuild each one on
# the front's side (so the front's door gives them the statuses of a one-process service).
_WIRE_ERRORS: dict[str, tuple[type[Exception], Callable[[Any], list[Any]]]] = {
    cls.__name__: (cls, args)
    for cls, args in (
        (QueueFull, lambda e: [e.retry_after_s]),
        (TooManyWindows, lambda e: [e.windows, e.limit]),
        (NotReady, lambda e: [e.message, e.retry_after_s]),
        (DeadlineExceeded, lambda e: [str(e)]),
        (BatcherStopped, lambda e: [str(e)]),
        (UnknownModel, lambda e: [e.message]),
    )
}


def _error_header(rid: int, exc: BaseException) -> dict[str, Any]:
    name = type(exc).__name__
    args = _WIRE_ERRORS[name][1](exc) if name in _WIRE_ERRORS else [str(exc)]
    return {"id": rid, "ok": False, "error": name, "args": args}


def _raise_remote(header: dict[str, Any]) -> None:
    name, args = str(header.get("error")), list(header.get("args") or ["engine error"])
    cls = _WIRE_ERRORS[name][0] if name in _WIRE_ERRORS else TaggingError
    raise cls(*args)


def _encode_results(rid: int, results: list[WindowResult]) -> tuple[dict[str, Any], bytes]:
    kinds = sorted(results[0].outputs) if results else []
    shapes = [[list(r.outputs[k].shape) for k in kinds] for r in results]
    meta = [[r.queue_s, r.compute_s, r.batch_size, r.batch_id] for r in results]
    payload = b"".join(
        np.ascontiguousarray(r.outputs[k], np.float32).data for r in results for k in kinds
    )
    return {"id": rid, "ok": True, "kinds": kinds, "shapes": shapes, "meta": meta}, payload


def _decode_results(header: dict[str, Any], payload: bytes) -> list[WindowResult]:
    flat, at, out = np.frombuffer(payload, np.float32), 0, []
    kinds = header["kinds"]
    for shapes, meta in zip(header["shapes"], header["meta"], strict=True):
        outputs = {}
        for kind, shape in zip(kinds, shapes, strict=True):
            size = int(np.prod(shape))
            outputs[kind] = flat[at : at + size].reshape(shape)
            at += size
        out.append(
            WindowResult(outputs, float(meta[0]), float(meta[1]), int(meta[2]), int(meta[3]))
        )
    return out


async def _send_quietly(frames: Frames, header: dict[str, Any]) -> None:
    """A cancelled submit's answer, to a front that may be gone already."""
    with contextlib.suppress(ConnectionError):
        await frames.send({**header, "error": "cancelled"})


def _forget(tasks: dict[int, asyncio.Task[None]], rid: int, frames: Frames) -> Any:
    """Drop a finished submit; a cancelled one still gets an answer, which tells the front
    that its arena extent is no longer read (even if the task never started)."""

    def done(task: asyncio.Task[None]) -> None:
        tasks.pop(rid, None)
        if task.cancelled() and not frames.is_closing():
            reply = asyncio.ensure_future(_send_quietly(frames, {"id": rid, "ok": False}))
            _answers.add(reply)
            reply.add_done_callback(_answers.discard)

    return done


_answers: set[asyncio.Future[None]] = set()  # cancellation answers on their way


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
        try:
            arena = await receive_arena(conn)
            reader, writer = await asyncio.open_unix_connection(sock=conn)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("a front's connection failed before its first request: %s", exc)
            conn.close()
            return
        await self._serve(reader, writer, arena)

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
    ) -> None:
        frames = Frames(writer)
        tasks: dict[int, asyncio.Task[None]] = {}
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
                    task = tasks.pop(rid, None)
                    if task is not None:
                        task.cancel()
                else:
                    windows = _windows(header, payload, arena)
                    task = asyncio.create_task(self._submit(rid, header, windows, frames))
                    tasks[rid] = task
                    task.add_done_callback(_forget(tasks, rid, frames))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the front went away (or the engine stops): its queued windows are dropped
        finally:
            for task in [*tasks.values(), *hellos]:
                task.cancel()
            frames.close()

    async def _submit(
        self,
        rid: int,
        header: dict[str, Any],
        windows: list[np.ndarray] | Exception,
        frames: Frames,
    ) -> None:
        try:
            deadline = time.monotonic() + float(header["deadline_in"])
            if isinstance(windows, Exception):
                raise windows
            runtime = self.models.get(header["model"])
            results = await runtime.batcher.submit(windows, deadline)
            reply, data = _encode_results(rid, results)
        except Exception as exc:
            reply, data = _error_header(rid, exc), b""
        with contextlib.suppress(ConnectionError):
            await frames.send(reply, data)


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
            return windows_at(np.frombuffer(payload, np.float32), packed(lengths), lengths)
        if arena is None:
            return ConnectionError("windows in an arena this front never sent")
        return windows_at(arena, [int(at) for at in header["ats"]], lengths)
    except (TypeError, ValueError) as exc:
        return ValueError(f"unusable window offsets: {exc}")


class EngineClient:
    """A front process's one connection to the engine, shared by all its requests."""

    def __init__(self, path: str, arena_bytes: int = ARENA_BYTES) -> None:
        self.path = path
        shared = arena_bytes > 0 and hasattr(os, "memfd_create")  # Linux; else inline
        self.arena = Arena(arena_bytes) if shared else None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        # windows in the arena the engine may still read: held (not reused) until it answers
        self._held: dict[int, list[np.ndarray]] = {}
        self._frames: Frames | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Connect and wait until the engine's models are ready; their descriptions."""
        ends = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(FileNotFoundError, ConnectionError):
                reader, writer = await self._open()
                self._frames = Frames(writer)
                self._reader_task = asyncio.create_task(self._read(reader))
                try:
                    # the engine answers once its models have loaded (or failed)
                    async with asyncio.timeout(max(0.0, ends - time.monotonic())):
                        hello, _ = await self._call({"op": "hello"}, b"")
                except TimeoutError:
                    raise NotReady("the engine process did not become ready") from None
                if hello.get("ready"):
                    return dict(hello["models"])
                raise NotReady(f"the engine failed to load: {hello.get('error')}")
            if time.monotonic() >= ends:
                raise NotReady("the engine process did not become ready")
            await asyncio.sleep(0.05)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)  # a local socket: connects (or fails) at once
            send_arena(sock, self.arena)
            return await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header, payload = await receive(reader)
                rid = int(header.get("id", 0))
                self._held.pop(rid, None)
                future = self._pending.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result((header, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.fail_pending("the engine process went away")

    async def _call(
        self,
        header: dict[str, Any],
        payload: bytes,
        held: list[np.ndarray] | None = None,
    ) -> tuple[dict[str, Any], bytes]:
        if self._frames is None or self._reader_task is None or self._reader_task.done():
            raise BatcherStopped("no connection to the engine process")
        rid = next(self._ids)
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[rid] = future
        if held is not None:
            self._held[rid] = held  # let go when the engine answers, whatever the answer
        await self._frames.send({**header, "id": rid}, payload)
        try:
            return await future
        except asyncio.CancelledError:
            self._pending.pop(rid, None)
            with contextlib.suppress(Exception):
                await self._frames.send({"op": "cancel", "id": rid})
            raise

    async def submit(
        self, model: str, windows: list[np.ndarray], deadline: float
    ) -> list[WindowResult]:
        header: dict[str, Any] = {
            "op": "submit",
            "model": model,
            "lengths": [int(w.shape[0]) for w in windows],
            "deadline_in": max(0.0, deadline - time.monotonic()),
        }
        placed = self.arena.place(windows) if self.arena is not None else None
        if placed is not None:
            header["ats"], payload = [self._offset(w) for w in placed], b""
        else:  # the arena is full: inline, views joined once (the payload is the only copy)
            payload = b"".join(np.ascontiguousarray(w, np.float32).data for w in windows)
        try:  # the engine enforces the deadline; this holds if the engine stops answering
            async with asyncio.timeout(header["deadline_in"] + _ENGINE_GRACE_S):
                reply, data = await self._call(header, payload, placed)
        except TimeoutError:
            raise DeadlineExceeded("the engine process did not answer by the deadline") from None
        if not reply.get("ok"):
            _raise_remote(reply)
        return _decode_results(reply, data)

    def _offset(self, window: np.ndarray) -> int:
        assert self.arena is not None
        at = self.arena.offset_of(window)
        assert at is not None, "a placed window lies in the arena"
        return at

    def waveform(self, count: int) -> np.ndarray:
        """Room for a decoded waveform of ``count`` samples: in the arena while it has room
        to spare (its windows then reach the engine without a copy), else on the heap."""
        in_arena = self.arena.array(count, decoded=True) if self.arena is not None else None
        return np.empty(count, np.float32) if in_arena is None else in_arena

    def fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BatcherStopped(message))
        self._pending.clear()
        self._held.clear()  # no engine reads them any more

    async def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
        if self._reader_task is not None:
            self._reader_task.cancel()


class RemoteBackend:
    """What a front process knows of a model the engine runs (never runs a batch itself)."""

    def __init__(self, card: ModelCard, info: dict[str, Any]) -> None:
        self.card = card
        self.device, self.provider = str(info["device"]), str(info["provider"])
        self.precision = str(info["precision"])
        self.kinds: dict[str, OutputKind] = dict(info["kinds"])
        self.inflight = 1  # never runs a batch: the engine process has the real figure

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("a front process runs no batches: the engine does")

    def warm_up(self, batch_sizes: list[int], length: int) -> None:
        return None


class RemoteQueue:
    """The batcher interface of one model, served by the engine process."""

    def __init__(self, client: EngineClient, model: str) -> None:
        self.client, self.model = client, model

    async def submit(self, windows: list[np.ndarray], deadline: float) -> list[WindowResult]:
        return await self.client.submit(self.model, windows, deadline)

    async def stop(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` for this front's requests still with the engine, then fail
        what is left (None: leave them to finish)."""
        if timeout is None:
            return
        waiting = [f for f in self.client._pending.values() if not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        self.client.fail_pending("the service is shutting down")


async def connect_models(models: Models, path: str) -> EngineClient:
    """Fill ``models`` (a front's) with the engine's models, reached through ``path``."""
    client = EngineClient(path)
    info = await client.connect()
    for bundle in models.settings.model_dirs:
        card = read_card(bundle)
        if card.name not in info:
            raise NotReady(f"the engine does not serve {card.name!r}")
        runtime = ModelRuntime(
            card,
            RemoteBackend(card, info[card.name]),
            RemoteQueue(client, card.name),  # type: ignore[arg-type]
            default=not models.models,
        )
        models.models[card.name] = runtime
    models.ready = True
    models.settled.set()
    return client
