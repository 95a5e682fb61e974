"""Turn model outputs into the response's numbers: top classes, aggregates, events."""

from __future__ import annotations

import numpy as np

from service.core.card import Label
from service.schemas import Event, FrameTrack, Top


def top_entries(
    scores: np.ndarray, labels: list[Label], k: int, threshold: float | None = None
) -> list[Top]:
    """The ``k`` best classes, best first, optionally only those scoring >= ``threshold``."""
    order = np.argsort(-scores, kind="stable")[:k]
    out = []
    for index in order:
        score = float(scores[index])
        if threshold is not None and score < threshold:
            break
        label = labels[index]
        out.append(Top(index=int(index), mid=label.mid, label=label.display_name, score=score))
    return out


def aggregate(rows: np.ndarray, how: str) -> np.ndarray:
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
        FrameTrack(
            index=int(i),
            mid=labels[i].mid,
            label=labels[i].display_name,
            scores=frames[:, i].tolist(),
        )
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
        for start, stop in zip(
            np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True
        ):
            start_s, end_s = start / fps, min(stop / fps, duration_s)
            if end_s - start_s + 1e-9 < min_duration_s:
                continue
            out.append(
                Event(
                    index=int(cls),
                    mid=labels[cls].mid,
                    label=labels[cls].display_name,
                    start_s=float(start_s),
                    end_s=float(end_s),
                    peak=float(frames[start:stop, cls].max()),
                )
            )
    return sorted(out, key=lambda e: (e.start_s, e.index))
