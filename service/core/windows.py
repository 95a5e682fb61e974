"""Cut a waveform into model windows (window/hop/pad), and map results back to time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class WindowError(ValueError):
    """The audio cannot be cut as asked (too short for the model without padding)."""


@dataclass(frozen=True)
class Window:
    start: int  # first sample in the source waveform
    end: int  # one past the last source sample covered (padding excluded)
    samples: np.ndarray  # what the model sees: (window,) when padded, else (end - start,)


def window_starts(n: int, window: int, hop: int) -> list[int]:
    """Starts 0, hop, 2*hop, ... until a window reaches the end of ``n`` samples."""
    starts = [0]
    while starts[-1] + window < n:
        starts.append(starts[-1] + hop)
    return starts


def cut(wave: np.ndarray, window: int, hop: int, pad: bool, min_samples: int) -> list[Window]:
    """Windows of ``window`` samples every ``hop`` samples.

    ``pad=True``: the last (or only) window is zero-padded to ``window`` samples, as in
    training. ``pad=False``: it is scored at its own length; a tail shorter than the model's
    ``min_samples`` starts earlier so that it has exactly ``min_samples`` samples.
    """
    n = wave.shape[0]
    if not pad and n < min_samples:
        raise WindowError(
            f"audio is {n} samples long; without padding the model needs at least "
            f"{min_samples} samples"
        )
    out = []
    for start in window_starts(n, window, hop):
        end = min(start + window, n)
        if pad and end - start < window:
            samples = np.zeros(window, np.float32)
            samples[: end - start] = wave[start:end]
        else:
            if not pad and end - start < min_samples:
                start = min(start, n - min_samples)
            samples = wave[start:end]  # a view: the batcher's np.stack makes the one copy
        out.append(Window(start, end, np.ascontiguousarray(samples, dtype=np.float32)))
    return out


def frames_spanning(samples: int, rate: int, fps: float) -> int:
    """How many frames (at ``fps``) cover ``samples`` (at ``rate``). Reckoned from sample
    counts, multiplied before divided, so that a whole number of frames is exact: from
    seconds, ``4.4 - 2.4`` is ``2.0000000000000004``, and ``35200 / 32000 * 100`` is
    ``110.00000000000001``; either kept one frame more (every door counts alike this way)."""
    return math.ceil(samples * fps / rate)


def stitch_frames(
    frames: list[np.ndarray], windows: list[Window], rate: int, fps: float, n_samples: int
) -> np.ndarray:
    """Place each window's (frames, classes) scores on one timeline; max where they overlap."""
    total = max(1, frames_spanning(n_samples, rate, fps))
    out = np.zeros((total, frames[0].shape[1]), np.float32)
    for scores, win in zip(frames, windows, strict=True):
        offset = round(win.start / rate * fps)
        covered = frames_spanning(win.end - win.start, rate, fps)
        usable = min(scores.shape[0], covered, total - offset)
        if usable > 0:
            view = out[offset : offset + usable]
            np.maximum(view, scores[:usable], out=view)
    return out
