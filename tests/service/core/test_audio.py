"""Decoding: every promised format, resampling, channel mixing, and refusal of bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from service.core.audio import (
    AudioError,
    AudioTooLong,
    EmptyAudio,
    UndecodableAudio,
    UnsupportedFormat,
    decode,
)
from tests.conftest import shared_path
from tests.service.conftest import RATE, encode, sine

LOSSLESS = [
    ("WAV", "PCM_U8", 2 / 256), ("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6),
    ("WAV", "PCM_32", 1e-6), ("WAV", "FLOAT", 0.0), ("WAV", "DOUBLE", 1e-7),
    ("FLAC", "PCM_16", 1e-4), ("FLAC", "PCM_24", 1e-6),
]
LOSSY = [("OGG", "VORBIS", 44100), ("OGG", "OPUS", 48000), ("MP3", "MPEG_LAYER_III", 44100)]


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.mark.parametrize(("fmt", "subtype", "tol"), LOSSLESS)
def test_lossless_formats_decode_exactly(fmt: str, subtype: str, tol: float) -> None:
    x = sine(440, 1.0, RATE)
    out = decode(encode(x, RATE, fmt, subtype), RATE, 60)
    assert out.waveform.dtype == np.float32 and out.waveform.shape == x.shape
    assert np.max(np.abs(out.waveform - x)) <= tol + 1e-7
    assert out.duration_s == pytest.approx(1.0)


@pytest.mark.parametrize(("fmt", "subtype", "rate"), LOSSY)
def test_lossy_formats_keep_length_and_pitch(fmt: str, subtype: str, rate: int) -> None:
    x = sine(1000, 2.0, rate)
    out = decode(encode(x, rate, fmt, subtype), RATE, 60)
    assert out.source_rate == rate
    assert abs(out.duration_s - 2.0) < 0.1  # codec priming/padding only
    assert abs(peak_hz(out.waveform, RATE) - 1000) < 5


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_resampling_keeps_a_sine_at_its_frequency(rate: int) -> None:
    out = decode(encode(sine(1234.0, 2.0, rate), rate), RATE, 60)
    assert out.source_rate == rate
    assert out.waveform.shape[0] == pytest.approx(2 * RATE, abs=2)
    assert peak_hz(out.waveform, RATE) == pytest.approx(1234.0, abs=1.0)
    assert np.max(np.abs(out.waveform[RATE // 2 : -RATE // 2])) == pytest.approx(0.5, abs=0.01)


def test_stereo_and_multichannel_are_mixed_to_mono() -> None:
    left, right = sine(440, 1.0, RATE), sine(880, 1.0, RATE, amp=0.25)
    out = decode(encode(np.stack([left, right], axis=1), RATE), RATE, 60)
    assert out.channels == 2
    np.testing.assert_allclose(out.waveform, (left + right) / 2, atol=1e-6)
    six = np.repeat(left[:, None], 6, axis=1)
    assert np.allclose(decode(encode(six, RATE), RATE, 60).waveform, left, atol=1e-6)


AUDIO = ["R9_ZSCveAHg_7s.wav", "R9_ZSCveAHg_7s.mp3", "metro_station_paris.wav",
         "speech_female_librispeech.ogg", "trumpet_solo.ogg", "whale_humpback.ogg"]


@pytest.mark.parametrize("name", AUDIO)
def test_real_recordings_decode(name: str) -> None:
    path = shared_path("audio", name)
    info = sf.info(str(path))
    out = decode(path.read_bytes(), RATE, 600)
    assert abs(out.duration_s - info.frames / info.samplerate) < 0.1
    assert out.channels == info.channels
    assert np.isfinite(out.waveform).all() and 0.001 < np.abs(out.waveform).max() <= 1.5


def _wav_header(channels: int, rate: int, data_bytes: int, bits: int = 16) -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt "
            + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_bytes))


BAD = [
    (b"", EmptyAudio, "empty"),
    (np.random.default_rng(0).bytes(5000), UnsupportedFormat, "unrecognised"),
    (_wav_header(0, RATE, 64) + bytes(64), AudioError, "0 channels"),
    (_wav_header(1, 4_000_000_000, 64) + bytes(64), AudioError, "sample rate"),
    (_wav_header(1, 0, 64) + bytes(64), AudioError, "sample rate"),
    (_wav_header(1, RATE, 2 * RATE * 3600 * 3) + bytes(640), AudioTooLong, "claims"),
    (_wav_header(1, RATE, 2 * RATE) + bytes(1000), UndecodableAudio, "truncated"),
    (_wav_header(1, RATE, 0)[:30], UndecodableAudio, "truncated"),
    (b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", UndecodableAudio, "WAV"),
    (encode(sine(440, 0.1, RATE), RATE, "AIFF", "PCM_16"), UnsupportedFormat, "AIFF"),
    (_wav_header(1, RATE, 0), EmptyAudio, "no audio"),
]


@pytest.mark.parametrize(("data", "error", "words"), BAD)
def test_bad_input_is_refused_with_a_reason(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        decode(data, RATE, 600)
    assert words in info.value.message


def test_nan_and_inf_samples_are_refused() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = sine(440, 0.5, RATE)
        x[100] = bad
        with pytest.raises(AudioError, match="NaN or infinite"):
            decode(encode(x, RATE), RATE, 60)


def test_duration_limit_is_enforced_for_compressed_audio() -> None:
    silence = np.zeros(RATE * 30, np.float32)  # 30 s of FLAC silence is a few kB
    data = encode(silence, RATE, "FLAC", "PCM_16")
    assert len(data) < 100_000
    with pytest.raises(AudioTooLong, match="limit is 10 s"):
        decode(data, RATE, 10)
    assert decode(data, RATE, 30).duration_s == pytest.approx(30)


def test_truncated_compressed_files_never_crash() -> None:
    for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
        data = encode(sine(440, 2.0, 44100), 44100, fmt, subtype)
        for cut in (10, 60, len(data) // 2):
            try:
                out = decode(data[:cut], RATE, 60)
            except AudioError as exc:
                assert exc.status in (400, 413, 415) and exc.message
            else:
                assert out.duration_s <= 2.1 and np.isfinite(out.waveform).all()
