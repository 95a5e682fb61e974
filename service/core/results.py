"""What the core returns: plain dataclasses, and the functions that compute them from arrays.

Aggregation over windows, top-k with a threshold, frame tracks and event segments are plain
functions on numpy arrays, shared by every door (REST, OIP, WebSocket, CLI, Python API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service.core.card import Label
from service.core.errors import TaggingError

Aggregate = Literal["max", "mean"]


@dataclass(frozen=True)
class Top:
    index: int
    mid: str
    label: str
    score: float


@dataclass(frozen=True)
class WindowTop:
    start_s: float
    end_s: float
    top: list[Top]


@dataclass(frozen=True)
class FileMetrics:
    decode_ms: float
    queue_ms: float  # longest wait of the file's windows before their batch
    inference_ms: float  # compute time of the batches the windows ran in
    total_ms: float
    windows: int
    batch_sizes: list[int]  # size of the batch each window ran in


@dataclass(frozen=True)
class FileResult:
    filename: str
    duration_s: float | None = None
    metrics: FileMetrics | None = None
    error: TaggingError | None = None


@dataclass(frozen=True)
class TagResult(FileResult):
    scores: np.ndarray | None = None  # (classes,) float32, in label order
    top: list[Top] | None = None
    windows: list[WindowTop] | None = None  # present with more than one window


@dataclass(frozen=True)
class EmbedResult(FileResult):
    embedding: np.ndarray | None = None  # mean over windows


@dataclass(frozen=True)
class TensorResult(FileResult):
    """Raw outputs of one input, one array per kind: clipwise aggregated by max over windows,
    the embedding averaged, framewise scores stitched on one timeline."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FrameTrack:
    index: int
    mid: str
    label: str
    scores: np.ndarray  # one score per frame at the result's frames_per_second


@dataclass(frozen=True)
class Event:
    index: int
    mid: str
    label: str
    start_s: float
    end_s: float
    peak: float


@dataclass(frozen=True)
class DetectResult(FileResult):
    frames_per_second: float | None = None
    tracks: list[FrameTrack] | None = None
    events: list[Event] | None = field(default=None)


def top_entries(
    scores: np.ndarray, labels: list[Label], k: int, threshold: float | None = None
) -> list[Top]:
    """The ``k`` best classes, best first, optionally only those scoring >= ``threshold``."""
    k = min(k, scores.shape[0])
    order = np.argsort(-scores, kind="stable")[:k]
    out = []
    for index in order:
        score = float(scores[index])
        if threshold is not None and score < threshold:
            break
        label = labels[index]
        out.append(Top(int(index), label.mid, label.display_name, score))
    return out


def aggregate(rows: np.ndarray, how: Aggregate) -> np.ndarray:
    """Combine (windows, classes) scores: max or mean over windows."""
    return rows.max(axis=0) if how == "max" else rows.mean(axis=0)


def decimate(frames: np.ndarray, factor: int) -> np.ndarray:
    """Max-pool (frames, classes) by ``factor`` along time (the last group may be shorter)."""
    if factor <= 1:
        return frames
    total = frames.shape[0]
    padded = np.full((-(-total // factor) * factor, frames.shape[1]), -np.inf, np.float32)
    padded[:total] = frames
    return padded.reshape(-1, factor, frames.shape[1]).max(axis=1)


def tracks(frames: np.ndarray, labels: list[Label], k: int) -> list[FrameTrack]:
    """Frame scores of the ``k`` classes with the highest peak."""
    peaks = frames.max(axis=0)
    order = np.argsort(-peaks, kind="stable")[:k]
    return [
        FrameTrack(int(i), labels[i].mid, labels[i].display_name, frames[:, i].copy())
        for i in order
    ]


def events(
    frames: np.ndarray,
    labels: list[Label],
    fps: float,
    threshold: float,
    min_duration_s: float,
    duration_s: float,
) -> list[Event]:
    """Runs of frames scoring >= threshold lasting >= min_duration_s, sorted by start."""
    active = frames >= threshold
    out = []
    for cls in np.flatnonzero(active.any(axis=0)):
        edges = np.diff(np.concatenate(([0], active[:, cls].astype(np.int8), [0])))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for start, stop in zip(starts, stops, strict=True):
            start_s, end_s = start / fps, min(stop / fps, duration_s)
            if end_s - start_s + 1e-9 < min_duration_s:
                continue
            peak = float(frames[start:stop, cls].max())
            label = labels[cls]
            out.append(
                Event(int(cls), label.mid, label.display_name, float(start_s), float(end_s), peak)
            )
    return sorted(out, key=lambda e: (e.start_s, e.index))
