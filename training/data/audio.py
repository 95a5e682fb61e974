"""Audio decoding shared by packing and the dataset classes.

Every clip the training code sees goes through :func:`load_audio`: decode with soundfile, mix to
mono, resample with soxr, then pad with zeros or truncate to a fixed length. Waveforms are stored
as int16 in packs; :func:`float_to_int16` / :func:`int16_to_float` convert with one scale (32767)
so a round trip is exact to one quantisation step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

INT16_SCALE = 32767.0
# Extensions tried when looking for audio by id or in a label folder (anything libsndfile reads).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus", ".w64")


class AudioDecodeError(ValueError):
    """A file that exists but cannot be decoded into audio (corrupt, empty, unsupported)."""


def fix_length(waveform: np.ndarray, samples: int) -> np.ndarray:
    """Truncate or zero-pad a 1-D waveform to exactly ``samples`` samples."""
    if samples <= 0:
        raise ValueError(f"samples must be positive, got {samples}")
    if len(waveform) >= samples:
        return waveform[:samples]
    return np.pad(waveform, (0, samples - len(waveform)))


def load_audio(
    path: str | Path,
    sample_rate: int = 32000,
    clip_samples: int | None = None,
    offset_seconds: float = 0.0,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sample_rate``.

    ``clip_samples`` pads or truncates the result (None keeps the decoded length);
    ``offset_seconds`` skips the start of the file (for sources holding whole recordings).
    Raises FileNotFoundError for a missing file and AudioDecodeError for one that cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(str(path)) as fh:
            native_rate = fh.samplerate
            if offset_seconds > 0:
                fh.seek(min(round(offset_seconds * native_rate), fh.frames))
            frames = -1
            if clip_samples is not None:  # read only what the clip needs (plus resampler slack)
                frames = int(np.ceil(clip_samples * native_rate / sample_rate)) + 64
            data = fh.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, sf.SoundFileRuntimeError, RuntimeError) as exc:
        raise AudioDecodeError(f"{path}: cannot decode audio ({exc})") from exc
    if data.size == 0:
        raise AudioDecodeError(f"{path}: no audio samples")
    mono = data.mean(axis=1)
    if native_rate != sample_rate:
        mono = soxr.resample(mono, native_rate, sample_rate, quality="HQ")
    mono = np.asarray(mono, dtype=np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"{path}: audio contains NaN or infinite samples")
    return fix_length(mono, clip_samples) if clip_samples is not None else mono


def float_to_int16(waveform: np.ndarray) -> np.ndarray:
    """Clip to [-1, 1] and quantise to int16 (scale 32767)."""
    return np.round(np.clip(waveform, -1.0, 1.0) * INT16_SCALE).astype(np.int16)


def int16_to_float(waveform: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_to_int16`: float32 in [-1, 1]."""
    return (np.asarray(waveform, dtype=np.float32) / INT16_SCALE).astype(np.float32)


def index_audio_dir(audio_dir: Path) -> dict[str, Path]:
    """Map file stem -> path for the files in ``audio_dir`` (one directory scan, not one per id).

    When several files share a stem, a known audio extension wins, then the first name in order.
    """
    index: dict[str, Path] = {}
    for path in sorted(audio_dir.iterdir()):
        if not path.is_file():
            continue
        known = path.suffix.lower() in AUDIO_EXTENSIONS
        current = index.get(path.stem)
        if current is None or (known and current.suffix.lower() not in AUDIO_EXTENSIONS):
            index[path.stem] = path
    return index
