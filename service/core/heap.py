"""The heaps of a serving process: glibc's (reuse per-request buffers, return large ones)
and Python's cyclic collector (keep what the process loaded out of its full collections).

glibc serves a request larger than its mmap threshold (128 KiB at first) with a fresh
``mmap`` and unmaps it on free, and trims the heap's free top past its trim threshold. A
10 s clip's body and waveform (0.6-1.8 MB each) then arrive in fresh pages for every
request: about 300 page faults, 0.3-0.5 ms of kernel time per clip, a sixth of a front
process's whole cost per 32 kHz WAV upload (``perf stat -e page-faults``). Raising both
thresholds keeps such buffers in the heap, reused from request to request; a request
over ``LARGE_REQUEST_BYTES`` still gets its own mapping, and after one the heap is trimmed
(``release_memory``), so a 1 h upload does not leave the process large.

Python's collector walks every tracked object on a full (generation 2) collection: in a
front under load, about 85,000 objects, nearly all loaded at start (modules, the app and its
routes, the models' cards), for one 55-90 ms pause every ~10 s, during which no request
moves. ``freeze_loaded_objects`` moves what is alive once the process has loaded into the
permanent generation, so full collections walk only what requests made (under 1 ms).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import threading
from typing import Any

LARGE_REQUEST_BYTES = 32 << 20  # served by mmap, and the heap trimmed after the request
KEPT_FREE_BYTES = 64 << 20  # free heap top kept for the next requests

_releasing = threading.Lock()

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def keep_request_buffers() -> None:
    """Serve buffers below ``LARGE_REQUEST_BYTES`` from the reused heap (a server
    process calls this once at start; a library has no business changing its host's heap)."""
    libc = _libc()
    with contextlib.suppress(AttributeError):
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, LARGE_REQUEST_BYTES)
            libc.mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES)


def release_memory() -> None:
    """Hand freed heap back to the OS after a large request (glibc keeps it otherwise).

    One release at a time: a call while one runs (the door's and the core's trigger for the
    same large request) is covered by it."""
    if not _releasing.acquire(blocking=False):
        return
    try:
        libc = _libc()
        with contextlib.suppress(AttributeError):
            if libc is not None:
                libc.malloc_trim(0)
    finally:
        _releasing.release()


def freeze_loaded_objects() -> None:
    """Once a server process has loaded (its models, or its link to the engine): collect,
    then freeze what is left, out of every later collection's walk. Nothing loaded at start
    is let go before the process ends (no model reload), so nothing freed later is kept.
    A server process calls this; a library has no business freezing its host's collector."""
    gc.collect()
    gc.freeze()
