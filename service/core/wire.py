"""The front<->engine wire protocol: frames on the Unix socket, and what they carry.

Frames: 4-byte little-endian header length, JSON header, then ``header["bytes"]`` bytes.
A submit's windows lie in the front's shared-memory arena (``service.core.handoff``; the
header's ``ats`` say where each starts) unless the arena is full, when they follow the
header inline: end to end, or where the header's ``inline_ats`` say (byte offsets into the
payload) when overlapping windows travel as the span they cover. A submit may name the
output ``kinds`` its door reads; the answer carries each window's outputs of those kinds
(every kind when it names none) as float32, its header naming their kinds and shapes, or an
error that the front raises again as the same class. A large answer (a decision-level
model's frame scores, 2.1 MB per window) travels in the engine's answer arena instead of the
socket: its header's ``at`` and ``floats`` say where, and the front, once it has copied it
out, frees it with a ``free`` frame (``service.core.engine_server``).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import orjson

from service.core.batch import WindowResult
from service.core.errors import (
    BatcherStopped,
    DeadlineExceeded,
    NotReady,
    QueueFull,
    TaggingError,
    TooManyWindows,
    UnknownModel,
)

_LEN = struct.Struct("<I")
MAX_HEADER = 16 << 20  # a bound against garbage: a submit's header is ~20 bytes per window
_JOIN_BYTES = 1 << 16  # payloads above this are written on their own


class Frames:
    """The frames going out on one connection, written once per event-loop turn: the answers
    for a whole batch (or the requests that arrived together) leave in one system call and
    wake the other side once, not once each. A large inline payload is written at once, not
    copied into a joined buffer, and drained."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._out: list[bytes] = []
        self._scheduled = False

    def post(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Queue a frame for this turn's write (a large payload is written at once), without
        waiting for the other side to read: for the engine's answers, whose bytes are bounded
        by the requests the front has outstanding (the windows it placed in its arena, or
        inline ones the batcher admitted), not by a high-water mark here."""
        head = orjson.dumps({**header, "bytes": len(payload)}, option=orjson.OPT_SERIALIZE_NUMPY)
        self._out.append(_LEN.pack(len(head)) + head)
        if len(payload) > _JOIN_BYTES:
            self.flush()
            if not self.writer.is_closing():
                self.writer.write(payload)
            return
        if payload:
            self._out.append(payload)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """``post``, then wait while the other side reads slowly (back-pressure)."""
        self.post(header, payload)
        if self.backlogged():
            await self.writer.drain()

    def backlogged(self) -> bool:
        """More bytes wait for the other side than one joined write holds."""
        return self.writer.transport.get_write_buffer_size() > _JOIN_BYTES

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


def error_header(rid: int, exc: BaseException) -> dict[str, Any]:
    name = type(exc).__name__
    args = _WIRE_ERRORS[name][1](exc) if name in _WIRE_ERRORS else [str(exc)]
    return {"id": rid, "ok": False, "error": name, "args": args}


def raise_remote(header: dict[str, Any]) -> None:
    name, args = str(header.get("error")), list(header.get("args") or ["engine error"])
    cls = _WIRE_ERRORS[name][0] if name in _WIRE_ERRORS else TaggingError
    raise cls(*args)


def encode_results(
    rid: int, results: list[WindowResult], wanted: Collection[str] | None = None
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """A submit's answer: its header, and each window's outputs of the ``wanted`` kinds (None:
    every kind) as the float32 arrays that make up its payload, in order (``handoff.joined``,
    or copied into the engine's answer arena by ``service.core.engine_server``)."""
    kinds = sorted(results[0].outputs) if results else []
    if wanted is not None:
        kinds = [k for k in kinds if k in wanted]
    shapes = [[list(r.outputs[k].shape) for k in kinds] for r in results]
    meta = [[r.queue_s, r.compute_s, r.batch_size, r.batch_id] for r in results]
    parts = [np.ascontiguousarray(r.outputs[k], np.float32) for r in results for k in kinds]
    return {"id": rid, "ok": True, "kinds": kinds, "shapes": shapes, "meta": meta}, parts


def decode_results(header: dict[str, Any], payload: bytes | np.ndarray) -> list[WindowResult]:
    """The windows' results from an answer: views of its payload (no copy). ``math.prod``,
    not ``np.prod``: the latter's dispatch cost 40% of this, on every request of a front."""
    flat, at, out = np.frombuffer(payload, np.float32), 0, []
    kinds = header["kinds"]
    for shapes, (queue_s, compute_s, size, batch_id) in zip(
        header["shapes"], header["meta"], strict=True
    ):
        outputs = {}
        for kind, shape in zip(kinds, shapes, strict=True):
            end = at + math.prod(shape)
            outputs[kind] = flat[at:end].reshape(shape)
            at = end
        out.append(
            WindowResult(outputs, float(queue_s), float(compute_s), int(size), int(batch_id))
        )
    return out
