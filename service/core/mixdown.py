"""Mix decoded blocks down to mono and resample them into one preallocated float32 array.

Decoders and the raw PCM door hand over (frames, channels) blocks; ``MonoSink`` writes each
straight into the output (or through a streaming resampler), so a whole file never exists as
a list of blocks plus their concatenation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import soxr

from service.core.audiocheck import check_samples

# Where a decoded waveform is written: ``count`` float32 (a front's shared-memory arena, so
# its windows reach the engine without a copy; the heap otherwise).
Alloc = Callable[[int], np.ndarray]


def heap(count: int) -> np.ndarray:
    return np.empty(count, np.float32)


# Samples already in memory (plain WAV, raw PCM) are converted in blocks this large: a 10 s
# clip in one pass. Every block releases and retakes the GIL a few times (numpy, soxr), and
# each of those is a wake-up and a context switch while the event loop holds the GIL.
MEMORY_BLOCK_FRAMES = 1 << 20

# The resampler may emit a few samples more than the rate ratio (its final flush).
_RESAMPLER_SLACK = 64


def mix_into(block: np.ndarray, dest: np.ndarray, scale: float = 1.0) -> None:
    """``dest = scale * mean(block, axis=1)`` in float32, without a float64 detour.

    Column adds, not ``block.mean(axis=1)``: that reduction over a short strided axis costs
    ~30x more (7 ms vs 0.2 ms per 10 s stereo clip). The first column is cast into ``dest``
    by ``copyto`` and the scale applied in place: a ufunc given int16 and ``dtype=float32``
    casts through small buffers, 1.5x slower for a 10 s mono clip (0.16 vs 0.11 ms) and
    1.25x for stereo. Exact either way: an int16 (or int32 up to 2**24) sum is exact in
    float32, and the same scale multiplies the same float32 sum.
    """
    channels = block.shape[1]
    np.copyto(dest, block[:, 0], casting="unsafe")  # int16 -> float32: exact
    for c in range(1, channels):
        np.add(dest, block[:, c], out=dest, dtype=np.float32)
    dest *= np.float32(scale / channels)


def mono_at(
    block: np.ndarray, rate: int, target_rate: int, scale: float = 1.0, alloc: Alloc = heap
) -> np.ndarray:
    """A whole in-memory input (frames, channels) as mono float32 at ``target_rate``, in one
    soxr call: the same samples as ``MonoSink``'s stream (checked in the tests) in 0.8x the
    time, and soxr's array (exactly the resampled length) is the result, not copied.
    ``alloc`` gives the result's memory when no resampling is needed."""
    mono = alloc(block.shape[0]) if rate == target_rate else heap(block.shape[0])
    mix_into(block, mono, scale)
    return mono if rate == target_rate else soxr.resample(mono, rate, target_rate, quality="HQ")


class MonoSink:
    """The mono output at ``target_rate``: allocated once for ``expected_frames`` input
    frames, filled block by block, grown (one copy) only when a header understated its
    length, and trimmed in place at the end."""

    def __init__(self, rate: int, target_rate: int, expected_frames: int) -> None:
        self._rates = (rate, target_rate)
        self._resampling = rate != target_rate
        self._stream: soxr.ResampleStream | None = None  # made at the first streamed block
        size = math.ceil(expected_frames * target_rate / rate)
        if self._resampling:
            size += _RESAMPLER_SLACK
        self._out = np.empty(size, np.float32)
        self._scratch = np.empty(0, np.float32)
        self._pos = 0

    def push(self, block: np.ndarray, scale: float = 1.0) -> None:
        """Mix ``block`` (frames, channels; float32 or int16) to mono, times ``scale``."""
        frames = block.shape[0]
        if not self._resampling:
            self._reserve(frames)
            mix_into(block, self._out[self._pos : self._pos + frames], scale)
            self._pos += frames
            return
        if self._scratch.shape[0] < frames:
            self._scratch = np.empty(frames, np.float32)
        mono = self._scratch[:frames]
        mix_into(block, mono, scale)
        if self._stream is None:
            self._stream = soxr.ResampleStream(*self._rates, 1, dtype="float32", quality="HQ")
        self._append(self._stream.resample_chunk(mono))

    def finish(self) -> np.ndarray:
        """The waveform; the sink is empty afterwards."""
        if self._stream is not None:
            self._append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        out, self._out = self._out, np.empty(0, np.float32)
        if out.shape[0] > self._pos:
            try:
                out.resize(self._pos)  # realloc in place: returns the unused tail, no copy
            except ValueError:  # pragma: no cover - only if a view were still alive
                out = out[: self._pos].copy()
        return out

    def _append(self, chunk: np.ndarray) -> None:
        self._reserve(chunk.shape[0])
        self._out[self._pos : self._pos + chunk.shape[0]] = chunk
        self._pos += chunk.shape[0]

    def _reserve(self, frames: int) -> None:
        if self._pos + frames > self._out.shape[0]:
            grown = np.empty(max(self._pos + frames, self._out.shape[0] * 3 // 2), np.float32)
            grown[: self._pos] = self._out[: self._pos]
            self._out = grown


def to_mono(
    samples: np.ndarray, rate: int, target_rate: int, scale: float, alloc: Alloc = heap
) -> np.ndarray:
    """(frames, channels) samples already in memory as one mono float32 array at
    ``target_rate``; float samples are checked (NaN, inf, the bound)."""
    frames = samples.shape[0]
    if frames <= MEMORY_BLOCK_FRAMES:
        if samples.dtype.kind == "f":
            check_samples(samples)
        return mono_at(samples, rate, target_rate, scale, alloc)
    sink = MonoSink(rate, target_rate, frames)
    for first in range(0, frames, MEMORY_BLOCK_FRAMES):
        block = samples[first : first + MEMORY_BLOCK_FRAMES]
        if block.dtype.kind == "f":
            check_samples(block)
        sink.push(block, scale)
    return sink.finish()
