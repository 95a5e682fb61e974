"""What libsndfile reads an upload from: a memfd copy, or virtual I/O over the buffer.

With virtual I/O libsndfile calls back into Python for every read: 773 calls for a 10 s
MP3, each taking the GIL from the event loop and waiting for it. A copy of the upload in an
anonymous memory file (``memfd``, Linux) is read with plain system calls instead, and the
whole decode runs without the GIL (cffi releases it): the codec then runs beside the event
loop, not against it. Uploads past ``MEMFD_MAX_BYTES`` (or without ``memfd``) keep virtual
I/O, so a huge file is not held twice while it is decoded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import soundfile as sf

MEMFD_MAX_BYTES = 64 << 20

Buffer = bytes | bytearray | memoryview
Patch = tuple[int, bytes] | None  # (offset, bytes) laid over the upload: a repaired header


class _Source:
    """A read-only file over the upload for libsndfile's virtual I/O: reads copy straight
    from the body into libsndfile's buffer (no BytesIO copy of the whole upload)."""

    def __init__(self, data: Buffer, patch: Patch = None) -> None:
        self._view = memoryview(data).cast("B")
        self._patch = patch
        self._pos = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}.get(whence, 0)
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: memoryview) -> int:
        out = memoryview(buffer).cast("B")
        start = min(self._pos, len(self._view))
        n = min(len(out), len(self._view) - start)
        out[:n] = self._view[start : start + n]
        if self._patch is not None:
            at, data = self._patch
            lo, hi = max(at, start), min(at + len(data), start + n)
            if lo < hi:
                out[lo - start : hi - start] = data[lo - at : hi - at]
        self._pos = start + n
        return n


def _memfd(data: Buffer, patch: Patch) -> int | None:
    """A memory file holding the upload (with ``patch``), at offset 0; None if unavailable."""
    if not hasattr(os, "memfd_create") or len(data) > MEMFD_MAX_BYTES:
        return None
    try:
        fd = os.memfd_create("panns-upload", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        view, written = memoryview(data).cast("B"), 0
        while written < len(view):
            written += os.write(fd, view[written:])
        if patch is not None:
            os.pwrite(fd, patch[1], patch[0])
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def sound_file(data: Buffer, patch: Patch = None) -> Iterator[sf.SoundFile]:
    """libsndfile open on the upload; closed (and its memory file with it) on exit.
    Raises what ``sf.SoundFile`` raises for data it cannot open."""
    fd = _memfd(data, patch)
    source: Any = _Source(data, patch) if fd is None else fd
    try:
        with sf.SoundFile(source, closefd=False) as handle:
            yield handle
    finally:
        if fd is not None:
            os.close(fd)
