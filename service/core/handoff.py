"""Windows handed from a front process to the engine in shared memory, not through a socket.

Each front owns an ``Arena``: one anonymous shared-memory file (``memfd``, so no
``/dev/shm`` size limit applies, and nothing is left behind on a crash) that both processes
map. The front copies a request's windows into an extent of it and sends the engine only
the extent's offset; the engine stacks its batches straight from those views. Sending the
same 1.28 MB per 10 s window through the socket cost more CPU than decoding a WAV.

The memfd travels once per connection, as ``SCM_RIGHTS`` ancillary data on the Unix socket
before the stream protocol starts (``send_arena`` / ``receive_arena``). An extent is freed
only when the engine has answered for its request (result, error or cancellation), so a
front never overwrites windows the engine may still read. When the arena is full (or a
request is larger than it) the windows go inline through the socket as before.
"""

from __future__ import annotations

import asyncio
import bisect
import mmap
import os
import socket

import numpy as np

ALIGN = 64  # extents start on cache lines (and float32 boundaries)
_HELLO = b"arena"


class Arena:
    """A front's shared window memory: first-fit extents over one memfd."""

    def __init__(self, size: int) -> None:
        self.size = size - size % ALIGN
        self.fd = os.memfd_create("panns-windows", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self._map = mmap.mmap(self.fd, self.size)
        self.floats = np.frombuffer(self._map, np.float32)
        self._free: list[tuple[int, int]] = [(0, self.size)]  # (offset, bytes), by offset

    def alloc(self, nbytes: int) -> int | None:
        """The offset of ``nbytes`` of free arena, or None when no extent is large enough."""
        need = -(-max(nbytes, 1) // ALIGN) * ALIGN
        for i, (at, size) in enumerate(self._free):
            if size >= need:
                if size == need:
                    del self._free[i]
                else:
                    self._free[i] = (at + need, size - need)
                return at
        return None

    def free(self, at: int, nbytes: int) -> None:
        """Give an extent back, merged with its free neighbours."""
        size = -(-max(nbytes, 1) // ALIGN) * ALIGN
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
        return sum(size for _, size in self._free)

    def put(self, windows: list[np.ndarray]) -> tuple[int, int] | None:
        """Copy ``windows`` into a new extent: (offset, bytes), or None when they don't fit."""
        nbytes = 4 * sum(int(w.shape[0]) for w in windows)
        at = self.alloc(nbytes)
        if at is None:
            return None
        pos = at // 4
        for w in windows:
            self.floats[pos : pos + w.shape[0]] = w
            pos += w.shape[0]
        return at, nbytes

    def close(self) -> None:
        os.close(self.fd)


def windows_at(floats: np.ndarray, at: int, lengths: list[int]) -> list[np.ndarray]:
    """Views of the windows at byte offset ``at`` of ``floats`` (a front's arena, or an
    inline payload), checked: a bad offset is an error, never a read outside the buffer."""
    total = sum(lengths)
    if at % 4 or at < 0 or min(lengths, default=0) < 0 or at // 4 + total > floats.shape[0]:
        raise ValueError(f"windows at {at} (+{4 * total} bytes) lie outside the arena")
    out, pos = [], at // 4
    for n in lengths:
        out.append(floats[pos : pos + n])
        pos += n
    return out


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
