"""The work of one request: decode every input, cut windows, run them through the batcher.

Costs are bounded here, before any window is made: audio seconds per file and per request,
and windows per request (a tiny ``hop_s`` on a long file would otherwise fan out into
millions of windows), counted twice: by number, and by length in the model's own windows
(10 s), since a window's compute, memory and hand-off bytes grow with its length: 128 windows
of 60 s overlapping by 59.95 s hold 983 MB of float32 from a few seconds of upload.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.core.audiocheck import AudioError, AudioTooLong, Decoded
from service.core.batch import WindowResult
from service.core.card import ModelCard, OutputKind
from service.core.errors import DeadlineExceeded, InvalidParameters, TaggingError, TooMuchWork
from service.core.inputs import AudioInput
from service.core.mixdown import Alloc, heap
from service.core.models import ModelRuntime
from service.core.results import FileMetrics
from service.core.windows import Window, WindowError, cut

MAX_WINDOW_S = 60.0


class AudioTooShort(AudioError):
    code = "audio_too_short"


@dataclass(frozen=True)
class WindowSpec:
    """How audio is cut: ``window_s`` (None: the card's 10 s), ``hop_s`` (None: the window)."""

    window_s: float | None = None
    hop_s: float | None = None
    pad: bool = True

    def samples(self, card: ModelCard, min_hop_s: float) -> tuple[int, int]:
        """(window, hop) in samples; ``InvalidParameters`` for values the model cannot use."""
        for name, value in (("window_s", self.window_s), ("hop_s", self.hop_s)):
            if value is not None and not (0 < value <= MAX_WINDOW_S):
                raise InvalidParameters(f"{name} must be in (0, {MAX_WINDOW_S:g}] seconds")
        rate = card.sample_rate
        window = card.clip_samples if self.window_s is None else round(self.window_s * rate)
        hop = window if self.hop_s is None else round(self.hop_s * rate)
        if window < card.min_samples:
            raise InvalidParameters(
                f"window_s must be at least {card.min_samples / rate:g} s for model {card.name!r}"
            )
        if hop < max(1, round(min_hop_s * rate)):
            raise InvalidParameters(f"hop_s must be at least {min_hop_s:g} s")
        return window, hop


@dataclass(frozen=True)
class Limits:
    """What one request may cost."""

    per_file_s: float  # decoded seconds per file
    per_request_s: float  # decoded seconds, all files of the request
    max_windows: int  # windows per request, all files
    min_hop_s: float  # the smallest hop


@dataclass
class FileWork:
    """One input on its way through: decoded audio, its windows, their results."""

    filename: str
    decoded: Decoded | None = None
    windows: list[Window] = field(default_factory=list)
    error: TaggingError | None = None
    decode_ms: float = 0.0
    results: list[WindowResult] = field(default_factory=list)

    def metrics(self, started: float) -> FileMetrics:
        batches = {r.batch_id: r.compute_s for r in self.results}
        return FileMetrics(
            decode_ms=self.decode_ms,
            queue_ms=1000 * max((r.queue_s for r in self.results), default=0.0),
            inference_ms=1000 * sum(batches.values()),
            total_ms=1000 * (time.monotonic() - started),
            windows=len(self.results),
            batch_sizes=[r.batch_size for r in self.results],
        )

    def stack(self, kind: str) -> np.ndarray:
        return np.stack([r.outputs[kind] for r in self.results])


def count_windows(n: int, window: int, hop: int) -> int:
    """How many windows ``window_starts`` gives, without making them."""
    return 1 + max(0, math.ceil((n - window) / hop))


@dataclass
class _Budget:
    limits: Limits
    seconds: float = 0.0
    windows: int = 0


def _check_window_budget(budget: _Budget, count: int, window: int, card: ModelCard) -> None:
    """``TooMuchWork`` past ``max_windows`` windows, or past the length of that many of the
    model's own windows (10 s each): a 60 s window counts as six."""
    limits, rate = budget.limits, card.sample_rate
    if budget.windows + count > limits.max_windows:
        raise TooMuchWork(
            f"this request would cut {budget.windows + count} windows: the limit is "
            f"{limits.max_windows} per request (use a longer hop_s or fewer files)"
        )
    # every file of a request is cut with the same window
    allowed = limits.max_windows * card.clip_samples
    if (budget.windows + count) * window > allowed:
        total_s = (budget.windows + count) * window / rate
        raise TooMuchWork(
            f"this request's windows would hold {total_s:g} s of audio in all: the limit is "
            f"{allowed / rate:g} s ({limits.max_windows} windows of {card.clip_samples / rate:g}"
            " s) per request (use a longer hop_s, a shorter window_s or fewer files)"
        )


def _prepare_one(
    item: AudioInput,
    card: ModelCard,
    spec: WindowSpec,
    cut_at: tuple[int, int],
    budget: _Budget,
    alloc: Alloc,
) -> FileWork:
    work, start = FileWork(item.name), time.perf_counter()
    limits = budget.limits
    allowed = max(0.0, min(limits.per_file_s, limits.per_request_s - budget.seconds))
    try:
        work.decoded = item.decode(card.sample_rate, allowed, alloc)
        n = work.decoded.waveform.shape[0]
        count = count_windows(n, *cut_at)
        _check_window_budget(budget, count, cut_at[0], card)
        work.windows = cut(work.decoded.waveform, *cut_at, spec.pad, card.min_samples)
        budget.seconds += work.decoded.duration_s
        budget.windows += count
    except AudioTooLong as exc:
        work.error = exc
        if allowed < limits.per_file_s:
            work.error = AudioTooLong(
                f"the files of this request hold more than {limits.per_request_s:g} s of "
                "audio in total"
            )
    except (AudioError, TooMuchWork) as exc:
        work.error = exc
    except WindowError as exc:
        work.error = AudioTooShort(str(exc))
    if work.error is not None:
        # kept for its code and message; its traceback would hold this frame (and the
        # upload's bytes) in a cycle until the garbage collector ran
        work.error.__traceback__ = None
        work.decoded, work.windows = None, []
    work.decode_ms = 1000 * (time.perf_counter() - start)
    return work


def prepare(
    items: list[AudioInput],
    card: ModelCard,
    spec: WindowSpec,
    limits: Limits,
    alloc: Alloc = heap,
    deadline: float = math.inf,
) -> list[FileWork]:
    """Decode and cut every input, one after the other (blocking: run it in a thread).

    A bad input fails only its own entry. ``alloc``: where waveforms are written whole.
    ``DeadlineExceeded`` once ``deadline`` (``time.monotonic()``) has passed before a file:
    a request that waited long for a decoding thread does not start its work after it."""
    cut_at = spec.samples(card, limits.min_hop_s)
    budget = _Budget(limits)
    works = []
    for item in items:
        if time.monotonic() > deadline:
            raise DeadlineExceeded("the deadline passed before every file was decoded")
        works.append(_prepare_one(item, card, spec, cut_at, budget, alloc))
    return works


async def infer(
    works: list[FileWork],
    runtime: ModelRuntime,
    deadline: float,
    kinds: Sequence[OutputKind] | None = None,
) -> None:
    """Submit every window of every good input at once (admitted all or none); ``kinds``: the
    outputs the results are built from (None: all)."""
    good = [w for w in works if w.error is None]
    samples = [win.samples for w in good for win in w.windows]
    if not samples:
        return
    results = await runtime.batcher.submit(samples, deadline, kinds)
    offset = 0
    for work in good:
        work.results = results[offset : offset + len(work.windows)]
        offset += len(work.windows)
