"""CUDA helpers of the ONNX Runtime backend: page-locked staging buffers, CUDA graph runners
and the pool of in-flight slots.

Page-locked ("pinned") host memory lets the host->device copy run as DMA, without the
driver's extra bounce through its own pinned buffer. ONNX Runtime's Python API offers no
pinned host allocator for the CUDA provider (``OrtValue.ortvalue_from_shape_and_type`` knows
``cpu`` and ``cuda``), so a numpy buffer is page-locked in place with the CUDA runtime's
``cudaHostRegister`` (the library onnxruntime-gpu has loaded already) and bound as a CPU input:
ORT's copy to the device then reads pinned memory. Where the runtime library cannot be found
or registration fails, the buffer stays pageable (correct, only slower) and ``pinned`` says so.

Batches are padded with zero rows up to one of a few sizes (``batch_buckets``: powers of two,
and the full batch), and each size runs on a session of its own (``SessionsBySize``). Since
ONNX Runtime 1.20 its CUDA Conv kernels build their cuDNN plan (heuristics, and with
EXHAUSTIVE search a benchmark of the candidates) whenever a run's input shape differs from
that kernel's previous run, not only for a shape never seen (onnxruntime issue #23006): 0.2-
0.45 s for Cnn14 on an H200. One session fed batches of changing sizes stalls on nearly every
batch (measured there: the engine alone 180-260 windows/s, the service 104-117 clips/s,
against 1635-1780 for the raw engine at a fixed batch; py-spy showed the engine's threads in
cuDNN's heuristics). A session that only ever sees one shape builds each plan once, at
warm-up. Padding bounds the sessions to seven for a full batch of 64; a padded row costs GPU
time only, and at saturation batches are full anyway.

A slot is what one batch in flight needs: its staging buffer and, with CUDA graphs, its own
graph session (a captured graph replays fixed device addresses, so two batches in flight need
two). The backend runs at most ``len(slots)`` batches at once.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.backends import BatchInput

log = logging.getLogger("service.core.backends.ort")

CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
CUDA_HOST_REGISTER_PORTABLE = 1  # pinned for every CUDA context, not only the current one
GRAPH_WARMUP_RUNS = 3  # ORT runs a graph session plainly before it captures, then replays


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes a padded batch takes: 1, 2, 4, ... below ``max_batch``, and it."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def padded_size(rows: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``rows`` (``rows`` itself beyond the largest)."""
    return next((size for size in buckets if size >= rows), rows)


class SessionsBySize:
    """One session per batch size, opened on first use (warm-up opens them all), so that no
    session's kernels ever see a second input shape. Safe to call from several threads."""

    def __init__(self, open_session: Callable[[], ort.InferenceSession]) -> None:
        self._open = open_session
        self._sessions: dict[int, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def add(self, rows: int, session: ort.InferenceSession) -> None:
        """Use ``session`` (one opened already) for batches of ``rows``."""
        with self._lock:
            self._sessions.setdefault(rows, session)

    def get(self, rows: int) -> ort.InferenceSession:
        session = self._sessions.get(rows)
        if session is None:
            with self._lock:  # another thread may be opening it: open each size once
                session = self._sessions.get(rows)
                if session is None:
                    log.info("opening a session for batches of %d", rows)
                    session = self._sessions[rows] = self._open()
        return session

    def __len__(self) -> int:
        return len(self._sessions)


@lru_cache(maxsize=1)
def cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library (the one ORT loaded, by its soname), or None."""
    for name in CUDART_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
        return lib
    log.warning("no CUDA runtime library (%s): staging buffers stay pageable", CUDART_NAMES)
    return None


class Staging:
    """One reusable host buffer that batches are cast into before going to the device;
    page-locked when the CUDA runtime allows. It grows to the largest batch seen."""

    def __init__(self) -> None:
        self.pinned = False
        self._buffer = np.zeros(0, np.uint8)
        self._dirty = 0  # bytes from the start that may hold an earlier batch; beyond: zeros

    def fill(self, batch: BatchInput, dtype: type[np.generic], rows: int = 0) -> np.ndarray:
        """``batch`` (a (B, L) array or its B windows of L samples) cast to ``dtype`` in the
        buffer, row by row in one pass, then zero rows up to ``rows`` (when more than B); a
        view valid until the next fill. Padding rows are zeroed only where an earlier batch
        left data (a padded 10 s row is 1.28 MB of float32)."""
        length = len(batch[0]) if len(batch) else 0
        if any(window.shape != (length,) for window in batch):
            raise ValueError("the windows of a batch must all be 1-D, of one length")
        rows = max(rows, len(batch))
        row_bytes = length * np.dtype(dtype).itemsize
        size = rows * row_bytes
        if size > self._buffer.nbytes:
            self._grow(size)
        view = self._buffer[:size].view(dtype).reshape(rows, length)
        for row, window in zip(view, batch, strict=False):
            np.copyto(row, window, casting="same_kind")
        written = len(batch) * row_bytes
        self._buffer[written : min(size, self._dirty)] = 0
        self._dirty = self._dirty if self._dirty > size else written
        return view

    def _grow(self, size: int) -> None:
        self.close()
        self._buffer = np.zeros(size, np.uint8)  # zero pages: nothing to clear for padding
        self._dirty = 0
        lib = cudart()
        if lib is None:
            return
        code = lib.cudaHostRegister(self._buffer.ctypes.data, size, CUDA_HOST_REGISTER_PORTABLE)
        self.pinned = code == 0
        if not self.pinned:
            log.warning("cudaHostRegister failed (error %d): staging stays pageable", code)

    def close(self) -> None:
        if self.pinned:
            lib = cudart()
            if lib is not None:
                lib.cudaHostUnregister(self._buffer.ctypes.data)
            self.pinned = False


class GraphRunner:
    """A CUDA-graph session for one fixed input shape: fixed device buffers bound once; each
    run copies the staged batch into the input buffer and replays the captured graph."""

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        shape: tuple[int, int],
        dtype: type[np.generic],
        outputs: dict[str, tuple[tuple[int, ...], Any]],
    ) -> None:
        self.session, self.shape = session, shape
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(input_name, self.input)
        self.outputs = []
        for name, (out_shape, out_dtype) in outputs.items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), out_dtype, "cuda", 0)
            self.binding.bind_ortvalue_output(name, value)
            self.outputs.append(value)
        zeros = np.zeros(shape, dtype)
        for _ in range(GRAPH_WARMUP_RUNS):  # capture now, not on the first request
            self.run(zeros)

    def run(self, staged: np.ndarray) -> list[np.ndarray]:
        self.input.update_inplace(staged)
        self.session.run_with_iobinding(self.binding)
        return [value.numpy() for value in self.outputs]


@dataclass
class Slot:
    """What one batch in flight uses: a staging buffer, and a graph runner when enabled."""

    staging: Staging = field(default_factory=Staging)
    graph: GraphRunner | None = None


class SlotPool:
    """``n`` slots handed out one per running batch; ``take`` blocks while all are busy."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self._free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
        for slot in slots:
            self._free.put(slot)

    def take(self) -> Slot:
        return self._free.get()

    def give(self, slot: Slot) -> None:
        self._free.put(slot)

    @property
    def pinned(self) -> bool:
        return any(slot.staging.pinned for slot in self.slots)
