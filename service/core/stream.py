"""Live streams: raw PCM frames in, one result per hop out (the core of WS /v1/stream).

Frames are decoded incrementally (a sample split across two frames is kept until its other
bytes arrive), mixed down, resampled to the model rate with one ``soxr.ResampleStream`` and
cut into windows at starts 0, hop, 2*hop, ... exactly as ``windows.cut`` cuts a file, so a
streamed recording scores as ``/v1/tag?window_s=&hop_s=`` does. At the end the last partial
windows are zero-padded like ``pad=True``.

Back-pressure: at most ``max_outstanding`` windows of a stream wait in the batcher. When the
engine falls behind, windows that became ready meanwhile are dropped, only the latest is
kept, and the next result reports how many were ``skipped``: a live stream wants the present,
not a queue that grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr

from service.core.audiocheck import MAX_CHANNELS, MAX_RATE, MIN_RATE, PCM_DTYPES, check_samples
from service.core.batch import WindowResult
from service.core.card import ModelCard, OutputKind
from service.core.errors import BatcherStopped, DeadlineExceeded, InvalidParameters, QueueFull
from service.core.mixdown import mix_into
from service.core.models import ModelRuntime
from service.core.pipeline import WindowSpec
from service.core.results import Event, FrameTrack, Top, events, top_entries, tracks
from service.core.tasks import DetectOptions
from service.core.windows import frames_spanning, window_starts

# the outputs a window's result is built from (frame scores where the model has them)
STREAM_KINDS: list[OutputKind] = ["clipwise", "framewise"]

_KNOWN = {
    "type",
    "model",
    "sample_rate",
    "channels",
    "sample_format",
    "window_s",
    "hop_s",
    "top_k",
    "threshold",
    "event_threshold",
    "min_duration_s",
    "api_key",
}


@dataclass(frozen=True)
class StreamConfig:
    """What the client's opening message asks for."""

    sample_rate: int
    model: str | None = None
    channels: int = 1
    sample_format: str = "int16"
    window_s: float | None = None  # None: the card's clip length
    hop_s: float = 1.0
    top_k: int = 5
    threshold: float | None = None
    # SED models' events, as /v1/detect's threshold and min_duration_s (same defaults)
    event_threshold: float = DetectOptions.threshold
    min_duration_s: float = DetectOptions.min_duration_s

    @classmethod
    def parse(cls, message: Mapping[str, Any]) -> StreamConfig:
        """The opening message's fields; ``InvalidParameters`` naming the first bad one."""
        unknown = set(message) - _KNOWN
        if unknown:
            raise InvalidParameters(f"unknown field(s) in the opening message: {sorted(unknown)}")
        rate = _number(message, "sample_rate", int, None)
        if rate is None or not MIN_RATE <= rate <= MAX_RATE:
            raise InvalidParameters(f"sample_rate must be an integer in {MIN_RATE}..{MAX_RATE}")
        channels = _number(message, "channels", int, 1)
        if channels is None or not 1 <= channels <= MAX_CHANNELS:
            raise InvalidParameters(f"channels must be in 1..{MAX_CHANNELS}")
        fmt = message.get("sample_format", "int16")
        if fmt not in PCM_DTYPES:
            raise InvalidParameters("sample_format must be 'int16' or 'float32'")
        model = message.get("model")
        if model is not None and not (isinstance(model, str) and len(model) <= 200):
            raise InvalidParameters("model must be a model name")
        top_k = _number(message, "top_k", int, 5)
        if top_k is None or not 1 <= top_k <= 1000:
            raise InvalidParameters("top_k must be in 1..1000")
        threshold = _number(message, "threshold", float, None)
        if threshold is not None and not 0 <= threshold <= 1:
            raise InvalidParameters("threshold must be in [0, 1]")
        event_threshold = _number(message, "event_threshold", float, cls.event_threshold)
        if not 0 <= event_threshold <= 1:
            raise InvalidParameters("event_threshold must be in [0, 1]")
        min_duration_s = _number(message, "min_duration_s", float, cls.min_duration_s)
        if not 0 <= min_duration_s <= 3600:
            raise InvalidParameters("min_duration_s must be in [0, 3600]")
        return cls(
            rate,
            model,
            channels,
            fmt,
            _number(message, "window_s", float, None),
            _number(message, "hop_s", float, 1.0),
            top_k,
            threshold,
            event_threshold,
            min_duration_s,
        )

    @functools.cached_property
    def frame_bytes(self) -> int:
        return self.channels * np.dtype(PCM_DTYPES[self.sample_format][0]).itemsize


def _number(message: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = message.get(name, default)
    if value is None or value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameters(f"{name} must be a number")
    if kind is int and value != int(value):
        raise InvalidParameters(f"{name} must be an integer")
    if not math.isfinite(value):
        raise InvalidParameters(f"{name} must be finite")
    return kind(value)


class PcmDecoder:
    """Interleaved PCM bytes -> mono float32 at the model rate, across frame boundaries."""

    def __init__(self, config: StreamConfig, target_rate: int) -> None:
        self.config = config
        self._dtype, self._scale = PCM_DTYPES[config.sample_format]
        self._itemsize = np.dtype(self._dtype).itemsize
        self._rest = b""
        self._resampler = (
            None
            if config.sample_rate == target_rate
            else soxr.ResampleStream(
                config.sample_rate, target_rate, 1, dtype="float32", quality="HQ"
            )
        )

    def feed(self, data: bytes) -> np.ndarray:
        """The samples ``data`` completes; ``AudioError`` for NaN or infinite samples."""
        data = self._rest + data if self._rest else data
        usable = len(data) - len(data) % self.config.frame_bytes
        self._rest = data[usable:]
        raw = np.frombuffer(data, self._dtype, count=usable // self._itemsize)
        block = raw.reshape(-1, self.config.channels)
        if self.config.sample_format != "int16":
            check_samples(block)  # NaN, infinities and absurd magnitudes, as for uploads
        mono = np.empty(block.shape[0], np.float32)
        mix_into(block, mono, self._scale)
        return mono if self._resampler is None else self._resampler.resample_chunk(mono)

    def finish(self) -> np.ndarray:
        """What the resampler still holds (a trailing partial sample is dropped)."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)


class WindowCutter:
    """A buffer from which windows are cut at 0, hop, 2*hop, ... as ``windows.cut`` does.

    Frames are kept as they come and joined only when a window is taken, not at every frame:
    a 20 ms frame does not copy a 10 s buffer. ``push`` says which windows the new samples
    complete; only those ``take`` asks for are copied out, so a message that completes
    hundreds of windows (a 0.05 s hop) of which the stream keeps the latest costs one copy."""

    def __init__(self, window: int, hop: int) -> None:
        self.window, self.hop = window, hop
        self.total = 0  # samples received
        self.next_start = 0  # start of the next window not yet cut
        self._pieces: list[np.ndarray] = []
        self._offset = 0  # absolute index of the first kept sample

    def push(self, samples: np.ndarray) -> list[int]:
        """The starts of the whole windows the new samples complete; ``take`` any of them,
        then ``trim``."""
        self._pieces.append(samples)
        self.total += samples.shape[0]
        starts = []
        while self.next_start + self.window <= self.total:
            starts.append(self.next_start)
            self.next_start += self.hop
        return starts

    def take(self, start: int) -> tuple[int, int, np.ndarray]:
        """A window ``push`` completed (and not yet trimmed away): (start, end, samples)."""
        return self._take(start, start + self.window)

    def finish(self) -> list[tuple[int, int, np.ndarray]]:
        """The last windows, zero-padded: the starts ``window_starts`` gives past what was cut."""
        if self.total == 0:
            return []
        starts = window_starts(self.total, self.window, self.hop)
        return [
            self._take(s, min(s + self.window, self.total)) for s in starts if s >= self.next_start
        ]

    def _buffer(self) -> np.ndarray:
        if len(self._pieces) > 1:
            self._pieces = [np.concatenate(self._pieces)]
        return self._pieces[0] if self._pieces else np.zeros(0, np.float32)

    def _take(self, start: int, end: int) -> tuple[int, int, np.ndarray]:
        samples = np.zeros(self.window, np.float32)
        piece = self._buffer()[start - self._offset : end - self._offset]
        samples[: piece.shape[0]] = piece
        self.next_start = max(self.next_start, start + self.hop)
        return start, end, samples

    def trim(self) -> None:
        """Let go of the samples no window still to come needs."""
        drop = min(self.next_start, self.total) - self._offset
        if drop > 0:
            self._pieces = [self._buffer()[drop:]]
            self._offset += drop


@dataclass(frozen=True)
class StreamResult:
    """One window's result: its span in the stream, top labels, windows skipped before it."""

    start_s: float
    end_s: float
    top: list[Top]
    skipped: int
    tracks: list[FrameTrack] | None = None
    events: list[Event] | None = None
    error: str | None = None  # the engine could not score this window (e.g. deadline)


@dataclass
class _Pending:
    start: int
    end: int
    skipped: int
    task: asyncio.Task[list[WindowResult]]


@dataclass
class LiveStream:
    """One client's stream against ``runtime``; ``feed`` bytes, read ``results()``."""

    runtime: ModelRuntime
    config: StreamConfig
    min_hop_s: float
    timeout_s: float
    max_outstanding: int = 2
    skipped_total: int = 0
    windows_total: int = 0
    _queue: deque[_Pending] = field(default_factory=deque)
    _ready: tuple[int, int, np.ndarray] | None = None
    _skipped: int = 0
    _done: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)  # a window was submitted
    _room: asyncio.Event = field(default_factory=asyncio.Event)  # a result was delivered

    def __post_init__(self) -> None:
        card = self.runtime.card
        spec = WindowSpec(self.config.window_s, self.config.hop_s, pad=True)
        window, hop = spec.samples(card, self.min_hop_s)
        self.decoder = PcmDecoder(self.config, card.sample_rate)
        self.cutter = WindowCutter(window, hop)

    @property
    def card(self) -> ModelCard:
        return self.runtime.card

    def feed(self, data: bytes) -> float:
        """Decode ``data`` and queue the windows it completes; the seconds of audio it held."""
        samples = self.decoder.feed(data)
        starts = self.cutter.push(samples)
        for i, start in enumerate(starts):
            if self._busy() and i < len(starts) - 1:  # a later window replaces it at once
                self._skip()
                continue
            self._offer(self.cutter.take(start))
        self.cutter.trim()
        return samples.shape[0] / self.card.sample_rate

    async def finish(self) -> None:
        """End of stream: the padded last windows, each waiting for room (none skipped)."""
        tail = [self.cutter.take(s) for s in self.cutter.push(self.decoder.finish())]
        tail += self.cutter.finish()
        for item in tail:
            while self._ready is not None or self._busy():
                self._room.clear()
                await self._room.wait()
            self._offer(item)
        while self._ready is not None:
            self._room.clear()
            await self._room.wait()
        self._done = True
        self._wake.set()

    def _busy(self) -> bool:
        """Windows submitted and not yet delivered (a slow reader also makes room scarce)."""
        return len(self._queue) >= self.max_outstanding

    def _offer(self, item: tuple[int, int, np.ndarray]) -> None:
        """Submit now if there is room; else keep only the latest waiting window."""
        if self._ready is not None:
            self._skip()
        self._ready = item
        self._pump()

    def _skip(self) -> None:
        self._skipped += 1
        self.skipped_total += 1

    def _pump(self) -> None:
        if self._ready is None or self._busy():
            return
        start, end, samples = self._ready
        self._ready = None
        deadline = time.monotonic() + self.timeout_s
        task = asyncio.ensure_future(self.runtime.batcher.submit([samples], deadline, STREAM_KINDS))
        self._queue.append(_Pending(start, end, self._skipped, task))
        self._skipped = 0
        self.windows_total += 1
        self._wake.set()

    async def results(self) -> AsyncIterator[StreamResult]:
        """Results in stream order until ``finish`` and every window is answered."""
        while True:
            if self._queue:
                pending = self._queue[0]
                yield await self._result(pending)
                self._queue.popleft()
                self._pump()  # room again: the latest waiting window goes in
                self._room.set()
            elif self._done:
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _result(self, pending: _Pending) -> StreamResult:
        rate = self.card.sample_rate
        try:
            (result,) = await pending.task
        except (QueueFull, DeadlineExceeded, BatcherStopped) as exc:
            start_s, end_s = pending.start / rate, pending.end / rate
            return StreamResult(start_s, end_s, [], pending.skipped, error=str(exc))
        return self._build(result, pending)

    def _build(self, result: WindowResult, pending: _Pending) -> StreamResult:
        """A window's result, its frames and events cut to its audio as /v1/detect cuts a
        file's (from sample counts)."""
        cfg, card, rate = self.config, self.card, self.card.sample_rate
        start_s, end_s, skipped = pending.start / rate, pending.end / rate, pending.skipped
        top = top_entries(result.outputs["clipwise"], card.labels, cfg.top_k, cfg.threshold)
        frames = result.outputs.get("framewise")
        fps = card.frames_per_second
        if frames is None or fps is None:
            return StreamResult(start_s, end_s, top, skipped)
        samples = pending.end - pending.start
        covered = frames[: max(1, frames_spanning(samples, rate, fps))]
        found = events(
            covered, card.labels, fps, cfg.event_threshold, cfg.min_duration_s, samples / rate
        )
        shifted = [
            Event(e.index, e.mid, e.label, e.start_s + start_s, e.end_s + start_s, e.peak)
            for e in found
        ]
        return StreamResult(
            start_s, end_s, top, skipped, tracks(covered, card.labels, cfg.top_k), shifted
        )

    async def close(self) -> None:
        """Drop what is still queued (the client is gone)."""
        for pending in self._queue:
            pending.task.cancel()
        for pending in self._queue:
            with contextlib.suppress(BaseException):
                await pending.task
        self._queue.clear()
