"""What the core accepts as audio: encoded bytes, a file path, raw PCM, or a waveform."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from service.core.audio import decode, decode_pcm
from service.core.audiocheck import AudioError, Decoded
from service.core.mixdown import Alloc, heap
from service.core.wav import is_plain_wav_at

PcmDtype = Literal["int16", "float32"]


@dataclass(frozen=True)
class PcmFormat:
    """How raw PCM bytes are laid out: interleaved frames of ``channels`` samples."""

    sample_rate: int
    channels: int = 1
    dtype: PcmDtype = "int16"


@dataclass(frozen=True)
class AudioInput:
    """One piece of audio and the name results carry for it.

    Exactly one of ``data`` (encoded file bytes, or raw PCM when ``pcm`` is set), ``path``
    or ``waveform`` (float, ``(samples,)`` or ``(samples, channels)`` at ``sample_rate``)."""

    name: str
    data: bytes | bytearray | memoryview | None = None
    path: Path | None = None
    waveform: np.ndarray | None = None
    sample_rate: int | None = None
    pcm: PcmFormat | None = None

    def decode(self, target_rate: int, max_seconds: float, alloc: Alloc = heap) -> Decoded:
        """Mono float32 at ``target_rate``; an ``AudioError`` naming what is wrong. ``alloc``
        gives the waveform's memory where it is written whole at the model's rate."""
        if self.waveform is not None:
            return _from_waveform(self.waveform, self.sample_rate, target_rate, max_seconds, alloc)
        data = self.data if self.path is None else _read(self.path)
        assert data is not None
        if self.pcm is not None:
            return decode_pcm(
                data,
                sample_rate=self.pcm.sample_rate,
                channels=self.pcm.channels,
                dtype=self.pcm.dtype,
                target_rate=target_rate,
                max_seconds=max_seconds,
                alloc=alloc,
            )
        return decode(data, target_rate, max_seconds, alloc)  # any buffer: read in place

    def quick_bytes(self, target_rate: int) -> int | None:
        """The bytes to convert when decoding is a plain copy (PCM or a 16-bit/float WAV
        already at ``target_rate``, in memory); None when it needs a codec, a resampler
        or a file read."""
        if self.data is None:
            return None
        if self.pcm is not None:
            return len(self.data) if self.pcm.sample_rate == target_rate else None
        return len(self.data) if is_plain_wav_at(self.data, target_rate) else None


Source = AudioInput | bytes | str | os.PathLike[str] | tuple[np.ndarray, int]


def as_input(source: Source, index: int = 0) -> AudioInput:
    """Normalise what a caller passed: bytes, a path, ``(waveform, rate)`` or an AudioInput."""
    if isinstance(source, AudioInput):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return AudioInput(f"file{index}", data=bytes(source))
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return AudioInput(str(path), path=path)
    if isinstance(source, tuple) and len(source) == 2:
        wave, rate = source
        return AudioInput(f"waveform{index}", waveform=np.asarray(wave), sample_rate=int(rate))
    raise TypeError(f"cannot tag a {type(source).__name__}: pass bytes, a path or (waveform, rate)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _from_waveform(
    wave: np.ndarray, rate: int | None, target_rate: int, max_seconds: float, alloc: Alloc
) -> Decoded:
    if rate is None:
        raise AudioError("a waveform needs its sample rate")
    if wave.ndim not in (1, 2):
        raise AudioError(f"a waveform is (samples,) or (samples, channels), not {wave.shape}")
    channels = 1 if wave.ndim == 1 else wave.shape[1]
    samples = np.ascontiguousarray(wave, dtype=np.float32)
    return decode_pcm(
        samples.data.cast("B"),  # a view: decode_pcm makes the one copy
        sample_rate=rate,
        channels=channels,
        dtype="float32",
        target_rate=target_rate,
        max_seconds=max_seconds,
        alloc=alloc,
    )
