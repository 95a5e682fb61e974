"""Write synthetic data sets: multi-label AudioSet-format clips, or single-label label folders."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from training.data.segments import Segment, write_segments
from training.synth.generators import SILENCE, SynthClass, available_classes

log = logging.getLogger(__name__)

MIN_EVENT_SECONDS = 2.5
EVENT_COUNT_PROBS = {1: 0.4, 2: 0.35, 3: 0.25}  # events per non-silent clip
YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_LAYOUT_STREAM = {"audioset": 0, "folder": 1}


@dataclass(frozen=True)
class SynthClip:
    clip_id: str  # an 11-character fake YTID starting with "syn"
    path: Path
    classes: tuple[SynthClass, ...]


def fake_ytid(rng: np.random.Generator) -> str:
    return "syn" + "".join(rng.choice(list(YTID_ALPHABET), size=8))


def mix_clip(
    classes: Sequence[SynthClass], sample_rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """One event per class at a random onset, duration (>= 2.5 s) and level (-10..0 dB)."""
    n = round(sample_rate * seconds)
    clip = np.zeros(n, dtype=np.float64)
    for cls in classes:
        duration = rng.uniform(min(MIN_EVENT_SECONDS, seconds), seconds)
        event = cls.make(sample_rate, duration, rng) * 10 ** (rng.uniform(-10, 0) / 20)
        event = event[:n]
        onset = int(rng.integers(0, n - len(event) + 1))
        clip[onset : onset + len(event)] += event
    peak = float(np.max(np.abs(clip))) if n else 0.0
    if peak > 0.95:
        clip *= 0.95 / peak
    return clip.astype(np.float32)


def draw_classes(pool: Sequence[SynthClass], rng: np.random.Generator) -> tuple[SynthClass, ...]:
    """Silence alone with probability 1/len(pool), otherwise 1-3 distinct sound events."""
    if SILENCE in pool and rng.random() < 1 / len(pool):
        return (SILENCE,)
    events = [c for c in pool if c is not SILENCE]
    counts = [k for k in EVENT_COUNT_PROBS if k <= len(events)]
    probs = np.array([EVENT_COUNT_PROBS[k] for k in counts])
    k = int(rng.choice(counts, p=probs / probs.sum()))
    picked = sorted(rng.choice(len(events), size=k, replace=False))
    return tuple(events[i] for i in picked)


def _clip_rng(seed: int, index: int, layout: str) -> np.random.Generator:
    """Each clip has its own stream, so clip i does not depend on how many came before."""
    return np.random.default_rng([seed, _LAYOUT_STREAM[layout], index])


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype="PCM_16")


def synth_audioset(
    out: str | Path,
    clips: int,
    *,
    seed: int = 0,
    sample_rate: int = 32000,
    clip_seconds: float = 10.0,
    speech: bool | None = None,
    progress: bool = True,
) -> list[SynthClip]:
    """``out/audio/<YTID>.wav`` multi-label clips, ``out/segments.csv`` (AudioSet format) and
    ``out/labels.csv`` (``path,labels`` with display names, for CsvDataset)."""
    out, pool = Path(out), available_classes(speech)
    written = []
    for i in tqdm(range(clips), desc="synth", unit="clip", disable=not progress):
        rng = _clip_rng(seed, i, "audioset")
        clip_id, classes = fake_ytid(rng), draw_classes(pool, rng)
        path = out / "audio" / f"{clip_id}.wav"
        _write_wav(path, mix_clip(classes, sample_rate, clip_seconds, rng), sample_rate)
        written.append(SynthClip(clip_id, path, classes))
    _write_segments(out / "segments.csv", written, clip_seconds, seed)
    _write_label_csv(out / "labels.csv", written, out)
    return written


def synth_folder(
    out: str | Path,
    clips: int,
    *,
    seed: int = 0,
    sample_rate: int = 32000,
    clip_seconds: float = 10.0,
    speech: bool | None = None,
    progress: bool = True,
) -> list[SynthClip]:
    """``out/<display name>/<YTID>.wav`` single-label clips, classes in turn (balanced)."""
    out, pool = Path(out), available_classes(speech)
    written = []
    for i in tqdm(range(clips), desc="synth", unit="clip", disable=not progress):
        rng = _clip_rng(seed, i, "folder")
        clip_id, cls = fake_ytid(rng), pool[i % len(pool)]
        path = out / cls.name / f"{clip_id}.wav"
        _write_wav(path, mix_clip((cls,), sample_rate, clip_seconds, rng), sample_rate)
        written.append(SynthClip(clip_id, path, (cls,)))
    return written


def _write_segments(path: Path, clips: Sequence[SynthClip], seconds: float, seed: int) -> None:
    segments = [Segment(c.clip_id, 0.0, seconds, tuple(k.mid for k in c.classes)) for c in clips]
    labels = {m for s in segments for m in s.mids}
    positives = sum(len(s.mids) for s in segments)
    write_segments(
        path,
        segments,
        comments=(
            f"Synthetic segments written by training.synth (seed={seed})",
            f"num_ytids={len(segments)}, num_segs={len(segments)}, "
            f"num_unique_labels={len(labels)}, num_positive_labels={positives}",
        ),
    )


def _write_label_csv(path: Path, clips: Sequence[SynthClip], root: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels"])
        for clip in clips:
            rel = clip.path.relative_to(root).as_posix()
            writer.writerow([rel, ";".join(c.name for c in clip.classes)])
