"""Audio for verification and calibration: deterministic generated clips, or real recordings."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")


def generated_clip(sample_rate: int, samples: int, seed: int) -> np.ndarray:
    """A deterministic test clip: two tones, a chirp, amplitude modulation and some noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples, dtype=np.float64) / sample_rate
    nyquist = sample_rate / 2
    f1, f2 = rng.uniform(80, nyquist / 8), rng.uniform(nyquist / 8, nyquist / 2)
    chirp_hz = 200 + (nyquist / 3) * t / max(t[-1], 1e-9)
    x = 0.25 * np.sin(2 * np.pi * f1 * t) + 0.15 * np.sin(2 * np.pi * f2 * t)
    x += 0.1 * np.sin(2 * np.pi * np.cumsum(chirp_hz) / sample_rate)
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 4) * t)
    x += 0.03 * rng.standard_normal(samples)
    return x.astype(np.float32)


def generated_batch(sample_rate: int, batch: int, samples: int, seed: int = 0) -> np.ndarray:
    """``batch`` generated clips of ``samples`` samples, shape (batch, samples), float32."""
    return np.stack([generated_clip(sample_rate, samples, seed + i) for i in range(batch)])


def recordings(directory: Path, sample_rate: int, samples: int) -> tuple[np.ndarray, list[str]]:
    """Every decodable recording in ``directory``, fitted to ``samples``; (batch, names).

    Files that fail to decode are skipped with a warning; no usable file is an error.
    Decoding is training's :func:`~training.data.audio.load_audio` (mono, soxr, pad/cut).
    """
    from training.data.audio import load_audio

    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    clips, names = [], []
    for path in paths:
        try:
            clips.append(load_audio(path, sample_rate, clip_samples=samples))
        except (RuntimeError, OSError, ValueError) as exc:  # AudioDecodeError is a ValueError
            log.warning("skipping %s: %s", path, exc)
            continue
        names.append(path.name)
    if not clips:
        kinds = ", ".join(AUDIO_SUFFIXES)
        raise FileNotFoundError(f"{directory}: no decodable audio files ({kinds})")
    return np.stack(clips), names
