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
decoded whole (up to 2**20 frames, about 33 s at 32 kHz) are written into the arena; longer
ones are copied in window by window. When the arena cannot hold what is left to copy (or a
request is larger than it) all the request's windows go inline through the socket.

The memfd travels once per connection, as ``SCM_RIGHTS`` ancillary data on the Unix socket
before the stream protocol starts (``send_arena`` / ``receive_arena``).
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
        it), the others (a zero-padded last window, say) copied into one new extent; None
        when those do not fit."""
        inside = [self.offset_of(w) is not None for w in windows]
        if all(inside):
            return list(windows)
        outside = sum(int(w.shape[0]) for w, ok in zip(windows, inside, strict=True) if not ok)
        block = self.array(outside)
        if block is None:
            return None
        out, pos = [], 0
        for w, ok in zip(windows, inside, strict=True):
            if not ok:
                block[pos : pos + w.shape[0]] = w
                w, pos = block[pos : pos + w.shape[0]], pos + w.shape[0]
            out.append(w)
        return out

    def close(self) -> None:
        os.close(self.fd)


def _rounded(nbytes: int) -> int:
    return -(-max(nbytes, 1) // ALIGN) * ALIGN


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


def send_arena(sock: socket.socket, arena: Arena | None) -> None:
    """The first bytes on a new engine connection: the arena's fd, or none (inline only).
    Five bytes into an empty socket buffer: this never blocks."""
    socket.send_fds(sock, [_HELLO], [] if arena is None else [arena.fd])


async def receive_arena(sock: socket.socket, timeout_s: float = 10.0) -> np.ndarray | None:
    """On the engine: the connecting front's arena, mapped (None when it sent none)."""
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
        raise ConnectionError("the front did not open with its arena")
    if not fds:
        return None
    try:
        size = os.fstat(fds[0]).st_size
        mapped = mmap.mmap(fds[0], size)
    finally:
        os.close(fds[0])
    # No explicit close: batches may still hold views; the map goes with the last of them.
    return np.frombuffer(mapped, np.float32)
