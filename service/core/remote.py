"""One engine process, many front processes: requests travel over a Unix socket.

With ``PANNS_WORKERS`` > 1 the supervisor runs the models (backends and batchers) in one
engine process per device, and N front processes do the HTTP, decoding and windowing. A front
hands each request's windows to the engine (float32 in its shared-memory arena, or raw
float32 inline; no pickles) and gets each window's outputs back, so windows of every front
share the engine's batches and there is one copy of the weights. ``RemoteQueue`` has the
batcher's ``submit`` interface, so the rest of the core does not know where the batcher runs.

This module is the front's side (``EngineClient``, and the stand-ins for the engine's models
that ``connect_models`` puts in a front's ``Models``); ``service.core.engine_server`` is the
engine's side, and ``service.core.wire`` the protocol between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.backends import BatchInput
from service.core.batch import WindowResult
from service.core.card import ModelCard, OutputKind, read_card
from service.core.errors import SHUTTING_DOWN, BatcherStopped, DeadlineExceeded, NotReady
from service.core.handoff import Arena, inline, receive_arena, send_arena, windows_at
from service.core.models import ModelRuntime, Models
from service.core.wire import Frames, decode_results, raise_remote, receive

ARENA_BYTES = 64 << 20  # per front: 50 windows of 10 s at 32 kHz on their way to the engine
_ENGINE_GRACE_S = 1.0  # past a request's deadline, a front stops waiting for the engine


class EngineClient:
    """A front process's one connection to the engine, shared by all its requests."""

    def __init__(self, path: str, arena_bytes: int = ARENA_BYTES) -> None:
        self.path = path
        shared = arena_bytes > 0 and hasattr(os, "memfd_create")  # Linux; else inline
        self.arena = Arena(arena_bytes) if shared else None
        self._ids = itertools.count(1)
        self._answers: np.ndarray | None = None  # the engine's answer arena, mapped
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes | np.ndarray]]] = {}
        # windows in the arena the engine may still read: held (not reused) until it answers
        self._held: dict[int, list[np.ndarray]] = {}
        self._frames: Frames | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Connect and wait until the engine's models are ready; their descriptions."""
        ends = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(FileNotFoundError, ConnectionError):
                reader, writer = await self._open(max(0.0, ends - time.monotonic()))
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

    async def _open(self, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)  # a local socket: connects (or fails) at once
            send_arena(sock, self.arena)
            try:  # the engine accepts at once, models loaded or not
                self._answers = await receive_arena(sock, timeout_s)
            except TimeoutError:
                raise NotReady("the engine process did not become ready") from None
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
                if future is None or future.done():  # cancelled: an answer lent is freed
                    self._free(header)
                    continue
                answer = self._lent_answer(header) if "at" in header else payload
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result((header, answer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.fail_pending("the engine process went away")

    def _lent_answer(self, header: dict[str, Any]) -> np.ndarray | Exception:
        """An answer the engine lent in its answer arena: copied out, and the extent freed
        at once (the request's results then live on the heap, however long it keeps them)."""
        try:
            if self._answers is None:
                raise ValueError("no answer arena on this connection")
            (view,) = windows_at(self._answers, [int(header["at"])], [int(header["floats"])])
            return view.copy()
        except (KeyError, TypeError, ValueError) as exc:
            return BatcherStopped(f"an unusable answer from the engine: {exc}")
        finally:
            self._free(header)

    def _free(self, header: dict[str, Any]) -> None:
        if "at" in header and self._frames is not None:
            self._frames.post({"op": "free", "at": header["at"]})

    async def _call(
        self,
        header: dict[str, Any],
        payload: bytes,
        held: list[np.ndarray] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[dict[str, Any], bytes | np.ndarray]:
        """Send a request and wait for its answer; past ``timeout_s`` it fails with
        ``DeadlineExceeded`` (a timer on its future: no timeout scope per request)."""
        if self._frames is None or self._reader_task is None or self._reader_task.done():
            raise BatcherStopped("no connection to the engine process")
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[dict[str, Any], bytes | np.ndarray]] = loop.create_future()
        self._pending[rid] = future
        if held is not None:
            self._held[rid] = held  # let go when the engine answers, whatever the answer
        timer = None if timeout_s is None else loop.call_later(timeout_s, _unanswered, future)
        try:
            await self._sent(self._frames, {**header, "id": rid}, payload, future)
            return await future
        except BaseException as exc:
            self._pending.pop(rid, None)  # nobody awaits its answer any more
            if isinstance(exc, (asyncio.CancelledError, DeadlineExceeded)):
                # the engine may drop its windows; posted, not awaited: a cancelled request
                # does not wait for a slow engine
                self._frames.post({"op": "cancel", "id": rid})
            raise
        finally:
            if timer is not None:
                timer.cancel()

    @staticmethod
    async def _sent(
        frames: Frames,
        header: dict[str, Any],
        payload: bytes,
        answer: asyncio.Future[tuple[dict[str, Any], bytes | np.ndarray]],
    ) -> None:
        """Post a frame; while the engine is slow to read it (a large inline payload), wait
        for it to take the bytes, but no longer than the answer stays open: ``fail_pending``
        (shutdown, the engine gone) must reach a request still sending, or it would wait out
        the shutdown's grace and leave as the server's bare 500."""
        frames.post(header, payload)
        if not frames.backlogged():
            return
        drain = asyncio.ensure_future(frames.writer.drain())
        try:
            await asyncio.wait((drain, answer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        # retrieved either way; when the answer is done, its own outcome (shutdown, say) stands
        broken = drain.exception() if drain.done() and not drain.cancelled() else None
        if broken is not None and not answer.done():
            raise BatcherStopped(f"the engine process went away: {broken}")

    async def submit(
        self,
        model: str,
        windows: Sequence[np.ndarray],
        deadline: float,
        kinds: Sequence[str] | None = None,
    ) -> list[WindowResult]:
        """The windows' results from the engine, with the outputs of ``kinds`` only (None:
        every kind the model has)."""
        header: dict[str, Any] = {
            "op": "submit",
            "model": model,
            "lengths": [int(w.shape[0]) for w in windows],
            "deadline_in": max(0.0, deadline - time.monotonic()),
        }
        if kinds is not None:
            header["kinds"] = sorted(kinds)
        placed = self.arena.place(windows) if self.arena is not None else None
        if placed is not None:
            header["ats"], payload = [self._offset(w) for w in placed], b""
        else:  # the arena is full: inline (the payload is the only copy; spans sent once)
            payload, inline_ats = inline(windows)
            if inline_ats is not None:  # not end to end: overlapping windows share samples
                header["inline_ats"] = inline_ats
        # the engine enforces the deadline; the timeout holds if the engine stops answering
        timeout_s = header["deadline_in"] + _ENGINE_GRACE_S
        reply, data = await self._call(header, payload, placed, timeout_s)
        if not reply.get("ok"):
            raise_remote(reply)
        return decode_results(reply, data)

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

    async def wait_pending(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the requests still with the engine."""
        waiting = [f for f in self._pending.values() if not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

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


def _unanswered(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded("the engine process did not answer by the deadline"))


class RemoteBackend:
    """What a front process knows of a model the engine runs (never runs a batch itself)."""

    def __init__(self, card: ModelCard, info: dict[str, Any]) -> None:
        self.card = card
        self.device, self.provider = str(info["device"]), str(info["provider"])
        self.precision = str(info["precision"])
        self.kinds: dict[str, OutputKind] = dict(info["kinds"])
        self.inflight = 1  # never runs a batch: the engine process has the real figure
        self.stages = False

    def run(self, batch: BatchInput) -> dict[str, np.ndarray]:
        raise RuntimeError("a front process runs no batches: the engine does")

    def warm_up(self, batch_sizes: list[int], length: int) -> None:
        return None


class RemoteQueue:
    """The batcher interface of one model, served by the engine process."""

    def __init__(self, client: EngineClient, model: str) -> None:
        self.client, self.model = client, model

    async def submit(
        self, windows: Sequence[np.ndarray], deadline: float, kinds: Sequence[str] | None = None
    ) -> list[WindowResult]:
        return await self.client.submit(self.model, windows, deadline, kinds)

    async def stop(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` for this front's requests still with the engine, then fail
        what is left (None: leave them to finish)."""
        if timeout is None:
            return
        await self.client.wait_pending(timeout)
        self.client.fail_pending(SHUTTING_DOWN)


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
            RemoteQueue(client, card.name),
            default=not models.models,
        )
        models.models[card.name] = runtime
    models.ready = True
    models.settled.set()
    return client
