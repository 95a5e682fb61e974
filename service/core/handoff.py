"""Windows handed from a front process to the engine in shared memory, not through a socket.

Each front owns an ``Arena``: one anonymous shared-memory file (``memfd``, so no
``/dev/shm`` size limit applies, and nothing is left behind on a crash) that both processes
map. The front copies a request's windows into an extent of it and sends the engine only
the extent's offset; the engine stacks its batches straight from those views. Sending the
same 1.28 MB per 10 s window through the socket cost more CPU than decoding a WAV.

A front may also decode straight into its arena (``Arena.array``): a 16-bit WAV at the
model's rate is converted once, into shared memory, and its windows (views of it) go to the
engine without a copy. Either way an extent is an array whose memory returns to the arena
once the array and every view of it are gone: the front keeps a request's windows until the
engine has answered for them (result, error or cancellation), so it never overwrites windows
the engine still reads for a live request. (A cancelled or expired request is answered at
once; a batch already cut may still read its windows then (stacking them, or on CUDA copying
them into its staging buffer when the run starts), which can only change that request's own
rows, discarded anyway: rows of a batch are independent.) Only waveforms
decoded whole (up to 2**20 frames, about 33 s at 32 kHz) are written into the arena; the
windows of longer (or resampled) ones are copied in (``layout``): windows that overlap (a
hop shorter than the window) as the one span of the waveform they cover, each sample once,
not once per window over it (10 times at 10 s / 1 s); others (a zero-padded last window)
one by one. When the arena cannot hold what is left to copy (or a request is larger than it)
all the request's windows go inline through the socket, laid out the same way.

The memfd travels once per connection, as ``SCM_RIGHTS`` ancillary data on the Unix socket
before the stream protocol starts (``send_arena`` / ``receive_arena``). The engine answers
with an arena of its own, for answers too large for the socket (``packed_into``): a
decision-level model's frame scores are 2.1 MB per window, and a socket copies them several
times on the way (the engine's join, the kernel twice, the front's stream buffer).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import mmap
import os
import socket
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALIGN = 64  # extents start on cache lines (and float32 boundaries)
_HELLO = b"arena"


class Arena:
    """A front's shared window memory: first-fit extents over one memfd.

    Extents are taken in any thread (decoding runs in threads too) and come back from
    whichever thread drops an array's last view: a finaliser only queues the extent, and
    the next ``array`` merges it back, so no lock is ever taken inside a finaliser."""

    def __init__(self, size: int) -> None:
        self.size = size - size % ALIGN
        self.fd = os.memfd_create("panns-windows", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self._map = mmap.mmap(self.fd, self.size)
        self.floats = np.frombuffer(self._map, np.float32)
        self._base = int(self.floats.__array_interface__["data"][0])
        self._free: list[tuple[int, int]] = [(0, self.size)]  # (offset, bytes), by offset
        self._lock = threading.Lock()
        self._released: collections.deque[tuple[int, int, bool]] = collections.deque()
        self._decoded = 0  # bytes of extents ``array(..., decoded=True)`` holds now

    def _take(self, need: int) -> int | None:
        for i, (at, size) in enumerate(self._free):
            if size >= need:
                if size == need:
                    del self._free[i]
                else:
                    self._free[i] = (at + need, size - need)
                return at
        return None

    def _reclaim(self) -> None:
        while self._released:
            at, size, decoded = self._released.popleft()
            self._decoded -= size if decoded else 0
            self._merge(at, size)

    def _merge(self, at: int, size: int) -> None:
        i = bisect.bisect_left(self._free, (at, 0))
        if i < len(self._free) and at + size == self._free[i][0]:
            size += self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == at:
            at, size = self._free[i - 1][0], self._free[i - 1][1] + size
            i -= 1
            del self._free[i]
        self._free.insert(i, (at, size))

    @property
    def free_bytes(self) -> int:
        with self._lock:
            self._reclaim()
            return sum(size for _, size in self._free)

    def array(self, count: int, decoded: bool = False) -> np.ndarray | None:
        """``count`` float32 in a new extent, given back once the array and every view of it
        are gone; None when no extent is large enough. ``decoded``: a decoder's output,
        allowed half the arena at most, so waveforms waiting for their turn never leave
        the windows on their way to the engine without room."""
        nbytes = _rounded(4 * count)
        with self._lock:
            self._reclaim()
            if count < 1 or (decoded and self._decoded + nbytes > self.size // 2):
                return None
            at = self._take(nbytes)
            if at is None:
                return None
            self._decoded += nbytes if decoded else 0
        out = np.frombuffer(self._map, np.float32, count, at)
        weakref.finalize(out, self._released.append, (at, nbytes, decoded))
        return out

    def offset_of(self, window: np.ndarray) -> int | None:
        """The byte offset of ``window`` when it lies in the arena (a float32 view of it)."""
        if window.dtype != np.float32 or not window.flags.c_contiguous:
            return None
        at = int(window.__array_interface__["data"][0]) - self._base
        return at if at >= 0 and at + window.nbytes <= self.size else None

    def place(self, windows: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """``windows`` in the arena: as they are where they lie there already (decoded into
        it), the others copied into one new extent as ``layout`` lays them out (overlapping
        views of a heap waveform as the span they cover, a zero-padded last window alone);
        None when those do not fit."""
        inside = [self.offset_of(w) is not None for w in windows]
        if all(inside):
            return list(windows)
        plan = layout([w for w, ok in zip(windows, inside, strict=True) if not ok])
        block = self.array(plan.floats)
        if block is None:
            return None
        copies = iter(plan.fill(block))
        return [w if ok else next(copies) for w, ok in zip(windows, inside, strict=True)]

    def close(self) -> None:
        os.close(self.fd)


def _rounded(nbytes: int) -> int:
    return -(-max(nbytes, 1) // ALIGN) * ALIGN


@dataclass
class Layout:
    """Where a request's windows lie in one float32 block (an arena extent, or an inline
    payload): ``pieces`` are copied in end to end, and window i is the block's
    ``[starts[i], starts[i] + lengths[i])``. Windows that overlap (a hop shorter than the
    window: at 10 s / 1 s each sample lies in 10 windows) share one piece, the span of the
    waveform they cover, so each sample is copied (and sent) once, not once per window."""

    pieces: list[np.ndarray]  # float32, C-contiguous
    starts: list[int]  # in floats
    lengths: list[int]

    @property
    def floats(self) -> int:
        return sum(int(p.shape[0]) for p in self.pieces)

    def fill(self, block: np.ndarray) -> list[np.ndarray]:
        """Copy the pieces into ``block`` (``floats`` long); the windows, as views of it."""
        copy_end_to_end(block, self.pieces)
        return [block[at : at + n] for at, n in zip(self.starts, self.lengths, strict=True)]

    def payload(self) -> bytes:
        """The pieces end to end: an inline payload (the one copy of them)."""
        return joined(self.pieces)


def layout(windows: Sequence[np.ndarray]) -> Layout:
    """``windows`` laid out in one block: each run of overlapping (or abutting) views of one
    buffer as the span it covers (``_spans``), any other window on its own; pieces in the
    order the windows first use them. One array passed twice is copied once."""
    spans = _spans(windows)
    pieces: list[np.ndarray] = []
    starts: list[int] = []
    at: dict[int, int] = {}  # id of a piece (all alive in ``pieces``) -> its start
    end = 0
    for i, w in enumerate(windows):
        piece, within = spans.get(i) or (np.ascontiguousarray(w, np.float32), 0)
        if id(piece) not in at:
            at[id(piece)], end = end, end + int(piece.shape[0])
            pieces.append(piece)
        starts.append(at[id(piece)] + within)
    return Layout(pieces, starts, [int(w.shape[0]) for w in windows])


def _spans(windows: Sequence[np.ndarray]) -> dict[int, tuple[np.ndarray, int]]:
    """For each window copied as part of a span: that span (one array per run) and where
    the window starts in it, in floats. Windows are grouped by the buffer they view, and a
    group split into runs of windows that overlap or abut (``_runs``): a run has no gap, so
    its span is never more bytes than its windows."""
    groups: dict[tuple[int, int], tuple[np.ndarray, list[int]]] = {}
    for i, w in enumerate(windows):
        whole = _buffer(w)
        if whole is not None:  # two live buffers at one address and size are one buffer
            groups.setdefault((_address(whole), whole.nbytes), (whole, []))[1].append(i)
    out: dict[int, tuple[np.ndarray, int]] = {}
    for whole, members in groups.values():
        for run in _runs(members, windows):
            piece = _span(whole, run)
            if piece is not None:
                out.update({i: (piece, (at - run.lo) // 4) for i, at in run.windows})
    return out


@dataclass
class _Run:
    """Windows of one buffer with no gap between them: ``[lo, hi)`` in addresses, and each
    window's index and address."""

    lo: int
    hi: int
    windows: list[tuple[int, int]]


def _runs(members: list[int], windows: Sequence[np.ndarray]) -> list[_Run]:
    """``members`` (windows of one buffer) in runs that leave no gap between their windows:
    two windows far apart in a long waveform are two runs, not one span of all between."""
    runs: list[_Run] = []
    for at, i in sorted((_address(windows[i]), i) for i in members):
        if not runs or at > runs[-1].hi:
            runs.append(_Run(at, at, []))
        runs[-1].hi = max(runs[-1].hi, at + windows[i].nbytes)
        runs[-1].windows.append((i, at))
    return runs


def _buffer(window: np.ndarray) -> np.ndarray | None:
    """The whole buffer a float32, C-contiguous, 1-D ``window`` is a view of (or its own,
    when it owns its memory), as bytes; None for any other window (copied alone)."""
    if window.dtype != np.float32 or window.ndim != 1 or not window.flags.c_contiguous:
        return None
    try:
        return np.frombuffer(window if window.base is None else window.base, np.uint8)
    except (TypeError, ValueError, BufferError):  # not one contiguous buffer
        return None


def _span(whole: np.ndarray, run: _Run) -> np.ndarray | None:
    """The float32 view of ``whole`` that covers ``run``; None for a lone window, a window
    off the run's float grid, or a run not inside ``whole`` (never: a view lies in its
    buffer; a slice past its end would be cut short silently)."""
    base = _address(whole)
    if len(run.windows) < 2 or any((at - run.lo) % 4 for _, at in run.windows):
        return None
    if run.lo < base or run.hi > base + whole.nbytes:
        return None
    return whole[run.lo - base : run.hi - base].view(np.float32)


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def inline(windows: Sequence[np.ndarray]) -> tuple[bytes, list[int] | None]:
    """An inline payload of ``windows`` (overlapping ones as the span they cover) and each
    window's byte offset in it; None when they lie end to end, as ``packed`` has them."""
    plan = layout(windows)
    ats = [4 * at for at in plan.starts]
    return plan.payload(), None if ats == packed(plan.lengths) else ats


def windows_at(floats: np.ndarray, offsets: list[int], lengths: list[int]) -> list[np.ndarray]:
    """Views of the windows at byte ``offsets`` of ``floats`` (a front's arena, or an inline
    payload), checked: a bad offset is an error, never a read outside the buffer."""
    if len(offsets) != len(lengths):
        raise ValueError(f"{len(offsets)} offsets for {len(lengths)} windows")
    out = []
    for at, n in zip(offsets, lengths, strict=True):
        if at % 4 or at < 0 or n < 0 or at // 4 + n > floats.shape[0]:
            raise ValueError(f"a window at {at} (+{4 * n} bytes) lies outside the arena")
        out.append(floats[at // 4 : at // 4 + n])
    return out


def packed(lengths: list[int]) -> list[int]:
    """The byte offsets of windows laid end to end (an inline payload)."""
    offsets, at = [], 0
    for n in lengths:
        offsets.append(at)
        at += 4 * n
    return offsets


def copy_end_to_end(block: np.ndarray, parts: Sequence[np.ndarray]) -> None:
    """Copy ``parts`` (C-contiguous, any shape) into the 1-D ``block``, end to end."""
    at = 0
    for part in parts:
        block[at : at + part.size] = part.reshape(-1)
        at += part.size


def joined(parts: Sequence[np.ndarray]) -> bytes:
    """``parts`` (float32, C-contiguous) end to end as bytes: an inline payload."""
    return b"".join(p.data for p in parts)


def packed_into(arena: Arena, parts: Sequence[np.ndarray]) -> np.ndarray | None:
    """``parts`` (float32, C-contiguous) end to end in a new extent of ``arena``; None when
    it has no room for them."""
    block = arena.array(sum(p.size for p in parts))
    if block is not None:
        copy_end_to_end(block, parts)
    return block


def send_arena(sock: socket.socket, arena: Arena | None) -> None:
    """The first bytes on a new engine connection: the arena's fd, or none (inline only).
    Five bytes into an empty socket buffer: this never blocks."""
    socket.send_fds(sock, [_HELLO], [] if arena is None else [arena.fd])


async def receive_arena(sock: socket.socket, timeout_s: float = 10.0) -> np.ndarray | None:
    """The other side's arena, mapped (None when it sent none): on the engine, the
    connecting front's; on a front, the engine's answer arena."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await asyncio.wait_for(ready, timeout_s)
    finally:
        loop.remove_reader(sock.fileno())
    data, fds, _, _ = socket.recv_fds(sock, len(_HELLO), 1)
    if data != _HELLO:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("the other side did not open with its arena")
    if not fds:
        return None
    try:
        size = os.fstat(fds[0]).st_size
        mapped = mmap.mmap(fds[0], size)
    finally:
        os.close(fds[0])
    # No explicit close: batches may still hold views; the map goes with the last of them.
    return np.frombuffer(mapped, np.float32)
