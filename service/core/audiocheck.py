"""What every decoder shares: the limits on an upload (rate, channels, length, sample
values), the ``AudioError`` family that refuses it, the checks, and ``Decoded``, what a
decode gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.errors import TaggingError

MIN_RATE, MAX_RATE = 1000, 384_000
MAX_CHANNELS = 64
# Float audio's full scale is +-1. Larger float samples are refused: 40 dB of headroom, and
# 7x below the smallest amplitude where a model variant was measured to give non-finite
# scores (seeded weights, loud square/sine/noise/DC; first failing amplitude: Wavegram_Logmel
# _Cnn14 fp16 700; LeeNet24, DaiNet19 fp16 above 6e4 (the input is cast to float16); Cnn14,
# MobileNetV1 fp32/fp16 1e17-1e18 (the float32 power spectrum overflows: the null scores of
# issue 15); int8 none up to 1e18).
MAX_ABS_SAMPLE = 100.0
# Source samples (frames x channels) one file may cost to decode: 10 min of 96 kHz stereo.
MAX_DECODE_SAMPLES = 115_200_000
PCM_DTYPES = {"int16": ("<i2", 1 / 32768), "float32": ("<f4", 1.0)}


class AudioError(TaggingError):
    """Why an upload cannot be used; ``status``/``code`` map it to the HTTP answer."""

    status = 400
    code = "invalid_audio"


class EmptyAudio(AudioError):
    code = "empty_audio"


class UndecodableAudio(AudioError):
    code = "undecodable_audio"


class UnsupportedFormat(AudioError):
    status, code = 415, "unsupported_format"


class AudioTooLong(AudioError):
    status, code = 413, "audio_too_long"


@dataclass(frozen=True)
class Decoded:
    waveform: np.ndarray  # (samples,) float32 mono at the target rate
    source_rate: int
    channels: int
    format: str
    duration_s: float


def check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")


def check_channels(channels: int) -> None:
    if channels < 1:
        raise AudioError(f"the audio declares {channels} channels")
    if channels > MAX_CHANNELS:
        raise AudioError(f"{channels} channels: at most {MAX_CHANNELS} are accepted")


def check_samples(block: np.ndarray) -> None:
    """Refuse float samples that are NaN, infinite or beyond ``MAX_ABS_SAMPLE``."""
    if block.min(initial=0.0) >= -MAX_ABS_SAMPLE and block.max(initial=0.0) <= MAX_ABS_SAMPLE:
        return  # False for NaN too: min/max propagate it
    if not np.isfinite(block).all():
        raise AudioError("audio contains NaN or infinite samples")
    peak = float(np.abs(block).max())
    raise AudioError(
        f"audio samples reach {peak:.3g}: float samples must lie within "
        f"+-{MAX_ABS_SAMPLE:g} (full scale is +-1.0)"
    )


def decode_limit_s(rate: int, channels: int, max_seconds: float) -> float:
    """The duration limit for a file of ``rate`` x ``channels``: ``max_seconds``, or less
    where decoding it would cost more than ``MAX_DECODE_SAMPLES`` (a small file can hold
    10 minutes at 384 kHz x 8 channels: 40 s of decoding on 2 cores)."""
    return min(max_seconds, MAX_DECODE_SAMPLES / (rate * channels))


def too_long(seconds: float, limit: float, max_seconds: float) -> AudioTooLong:
    why = "" if limit >= max_seconds else " at this sample rate and channel count"
    return AudioTooLong(f"audio is {seconds:.1f} s long: the limit is {limit:g} s{why}")
