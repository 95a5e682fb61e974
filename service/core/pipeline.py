"""The work of one request: decode every file, cut windows, run them through the batcher."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from service.core.audio import AudioError, Decoded, decode
from service.core.batcher import WindowResult
from service.core.models import ModelRuntime
from service.core.windows import Window, WindowError, cut
from service.errors import ApiError
from service.metrics import Metrics
from service.schemas import ErrorInfo, FileMetrics
from service.upload import Part


@dataclass(frozen=True)
class WindowParams:
    window_s: float | None  # None: the card's clip length
    hop_s: float | None  # None: equal to the window
    pad: bool

    def samples(self, runtime: ModelRuntime) -> tuple[int, int]:
        """(window, hop) in samples; 422 when the window is shorter than the model accepts."""
        card = runtime.card
        window = (
            card.clip_samples if self.window_s is None else round(self.window_s * card.sample_rate)
        )
        hop = window if self.hop_s is None else round(self.hop_s * card.sample_rate)
        if window < card.min_samples:
            raise ApiError(
                422,
                "invalid_parameters",
                f"window_s must be at least {card.min_samples / card.sample_rate:g} s "
                f"for model {card.name!r}",
            )
        if hop < 1:
            raise ApiError(422, "invalid_parameters", "hop_s is shorter than one sample")
        return window, hop


@dataclass
class FileWork:
    filename: str
    decoded: Decoded | None = None
    windows: list[Window] = field(default_factory=list)
    error: ErrorInfo | None = None
    status: int = 200
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


def _prepare(
    part: Part, runtime: ModelRuntime, params: WindowParams, max_s: float, window: int, hop: int
) -> FileWork:
    work = FileWork(part.filename)
    start = time.perf_counter()
    card = runtime.card
    try:
        data = part.data
        part.chunks.clear()  # the request keeps no second copy of the upload
        work.decoded = decode(data, card.sample_rate, max_s)
        work.windows = cut(work.decoded.waveform, window, hop, params.pad, card.min_samples)
    except AudioError as exc:
        work.error, work.status = ErrorInfo(code=exc.code, message=exc.message), exc.status
    except WindowError as exc:
        work.error, work.status = ErrorInfo(code="audio_too_short", message=str(exc)), 400
    work.decode_ms = 1000 * (time.perf_counter() - start)
    return work


@dataclass(frozen=True)
class AudioLimits:
    per_file_s: float
    per_request_s: float


def _prepare_sequential(
    parts: list[Part],
    runtime: ModelRuntime,
    params: WindowParams,
    limits: AudioLimits,
    window: int,
    hop: int,
) -> list[FileWork]:
    """Decode one file after the other, so decoded audio per request stays under its limit."""
    works, used = [], 0.0
    for part in parts:
        budget = max(0.0, min(limits.per_file_s, limits.per_request_s - used))
        work = _prepare(part, runtime, params, budget, window, hop)
        if work.error is not None and work.status == 413 and budget < limits.per_file_s:
            message = (
                f"the files of this request hold more than {limits.per_request_s:g} s "
                "of audio in total"
            )
            work.error = ErrorInfo(code="audio_too_long", message=message)
        used += work.decoded.duration_s if work.decoded is not None else 0.0
        works.append(work)
    return works


async def prepare_all(
    parts: list[Part],
    runtime: ModelRuntime,
    params: WindowParams,
    limits: AudioLimits,
    metrics: Metrics,
) -> list[FileWork]:
    """Decode and cut every file in a worker thread; a bad file only fails its own entry."""
    window, hop = params.samples(runtime)  # 422 for bad window parameters before any decoding
    works = await asyncio.to_thread(
        _prepare_sequential, parts, runtime, params, limits, window, hop
    )
    for work in works:
        if work.error is not None:
            metrics.decode_failures.labels(work.error.code).inc()
    if all(w.error is not None for w in works):
        first = works[0]
        assert first.error is not None
        raise ApiError(first.status, first.error.code, first.error.message)
    return works


async def infer_all(
    works: list[FileWork], runtime: ModelRuntime, deadline: float, metrics: Metrics
) -> None:
    """Submit every window of every good file at once (admitted all or none)."""
    good = [w for w in works if w.error is None]
    samples = [win.samples for w in good for win in w.windows]
    results = await runtime.batcher.submit(samples, deadline)
    offset = 0
    for work in good:
        work.results = results[offset : offset + len(work.windows)]
        offset += len(work.windows)
        assert work.decoded is not None
        metrics.audio_seconds.labels(runtime.name).inc(work.decoded.duration_s)
