"""What tag, embed and detect compute from a finished ``FileWork``, and their options."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.card import ModelCard, OutputKind
from service.core.errors import InvalidParameters, TooMuchWork
from service.core.pipeline import FileWork
from service.core.results import (
    Aggregate,
    DetectResult,
    EmbedResult,
    TagResult,
    TensorResult,
    WindowTop,
    aggregate,
    decimate,
    events,
    top_entries,
    tracks,
)
from service.core.windows import stitch_frames


@dataclass(frozen=True)
class TagOptions:
    top_k: int = 10
    threshold: float | None = None
    aggregate: Aggregate = "max"

    def check(self, card: ModelCard) -> None:
        if self.top_k < 1:
            raise InvalidParameters("top_k must be at least 1")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise InvalidParameters("threshold must be in [0, 1]")


@dataclass(frozen=True)
class DetectOptions:
    top_k: int = 5
    threshold: float = 0.5
    min_duration_s: float = 0.1
    frames_per_second: float | None = None  # None: the model's own frame rate
    max_values: int = 2_000_000  # frame scores + events one result may hold

    def factor(self, card: ModelCard) -> int:
        """The decimation factor for the asked frame rate (bounded by the model's frames)."""
        fps = card.frames_per_second
        assert fps is not None
        if self.top_k < 1:
            raise InvalidParameters("top_k must be at least 1")
        if not 0 <= self.threshold <= 1 or not 0 <= self.min_duration_s <= 3600:
            raise InvalidParameters("threshold must be in [0, 1], min_duration_s in [0, 3600]")
        asked = self.frames_per_second
        if asked is None:
            return 1
        if not 0.01 <= asked <= fps:
            raise InvalidParameters(
                f"frames_per_second must be in [0.01, {fps:g}] (the model's frame rate)"
            )
        return max(1, round(fps / asked))


def tag_result(work: FileWork, card: ModelCard, opts: TagOptions, started: float) -> TagResult:
    if work.error is not None or work.decoded is None:
        return TagResult(work.filename, error=work.error)
    rows = work.stack("clipwise")
    scores = aggregate(rows, opts.aggregate)
    windows = None
    if len(work.windows) > 1:
        rate = card.sample_rate
        windows = [
            WindowTop(
                w.start / rate,
                w.end / rate,
                top_entries(row, card.labels, opts.top_k, opts.threshold),
            )
            for w, row in zip(work.windows, rows, strict=True)
        ]
    return TagResult(
        work.filename,
        duration_s=work.decoded.duration_s,
        metrics=work.metrics(started),
        scores=scores,
        top=top_entries(scores, card.labels, opts.top_k, opts.threshold),
        windows=windows,
    )


def embed_result(work: FileWork, started: float) -> EmbedResult:
    if work.error is not None or work.decoded is None:
        return EmbedResult(work.filename, error=work.error)
    return EmbedResult(
        work.filename,
        duration_s=work.decoded.duration_s,
        metrics=work.metrics(started),
        embedding=work.stack("embedding").mean(axis=0),
    )


def detect_result(
    work: FileWork, card: ModelCard, opts: DetectOptions, started: float
) -> DetectResult:
    if work.error is not None or work.decoded is None:
        return DetectResult(work.filename, error=work.error)
    fps, factor = card.frames_per_second, opts.factor(card)
    assert fps is not None
    frames = _framewise(work, card)
    kept = decimate(frames, factor)
    duration = work.decoded.duration_s
    if kept.shape[0] * min(opts.top_k, kept.shape[1]) > opts.max_values:
        return DetectResult(work.filename, error=_too_large(opts.max_values, "frame scores"))
    if count_runs(frames, opts.threshold) > opts.max_values // 8:
        return DetectResult(work.filename, error=_too_large(opts.max_values // 8, "events"))
    found = events(frames, card.labels, fps, opts.threshold, opts.min_duration_s, duration)
    return DetectResult(
        work.filename,
        duration_s=duration,
        metrics=work.metrics(started),
        frames_per_second=fps / factor,
        tracks=tracks(kept, card.labels, opts.top_k),
        events=found,
    )


def tensor_result(
    work: FileWork, card: ModelCard, kinds: list[OutputKind], started: float
) -> TensorResult:
    """The model's own outputs for one input, whatever its number of windows: clipwise by
    max over windows (as /v1/tag by default), embedding by mean, framewise stitched."""
    if work.error is not None or work.decoded is None:
        return TensorResult(work.filename, error=work.error)
    outputs: dict[str, np.ndarray] = {}
    for kind in kinds:
        if kind == "clipwise":
            outputs[kind] = aggregate(work.stack(kind), "max")
        elif kind == "embedding":
            outputs[kind] = work.stack(kind).mean(axis=0)
        else:
            outputs[kind] = _framewise(work, card)
    return TensorResult(
        work.filename,
        duration_s=work.decoded.duration_s,
        metrics=work.metrics(started),
        outputs=outputs,
    )


def _framewise(work: FileWork, card: ModelCard) -> np.ndarray:
    """The windows' frame scores on one timeline (max where windows overlap)."""
    assert work.decoded is not None and card.frames_per_second is not None
    rows = [r.outputs["framewise"] for r in work.results]
    n = work.decoded.waveform.shape[0]
    return stitch_frames(rows, work.windows, card.sample_rate, card.frames_per_second, n)


def count_runs(frames: np.ndarray, threshold: float) -> int:
    """How many runs of frames >= threshold all classes hold (an upper bound on events)."""
    active = (frames >= threshold).astype(np.int8)
    return int(np.count_nonzero(np.diff(active, axis=0, prepend=0) == 1))


def _too_large(limit: int, what: str) -> TooMuchWork:
    return TooMuchWork(
        f"the result would hold more than {limit} {what}: lower top_k or frames_per_second, "
        "raise threshold or min_duration_s, or send a shorter file"
    )
