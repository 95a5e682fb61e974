"""Decoding: every promised format, resampling, channel mixing, and refusal of bad input."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.core.audio import decode, decode_pcm
from service.core.audiocheck import (
    MAX_ABS_SAMPLE,
    AudioError,
    AudioTooLong,
    EmptyAudio,
    UndecodableAudio,
    UnsupportedFormat,
)
from service.core.backends import BackendOptions, Precision
from service.core.backends.ort import OrtBackend
from tests.conftest import shared_path
from tests.service.audio_files import (
    adts_aac,
    id3_tag,
    unknown_length_flac,
    with_byte,
)
from tests.service.conftest import RATE, encode, noise, sine

LOSSLESS = [
    ("WAV", "PCM_U8", 2 / 256),
    ("WAV", "PCM_16", 1e-4),
    ("WAV", "PCM_24", 1e-6),
    ("WAV", "PCM_32", 1e-6),
    ("WAV", "FLOAT", 0.0),
    ("WAV", "DOUBLE", 1e-7),
    ("FLAC", "PCM_16", 1e-4),
    ("FLAC", "PCM_24", 1e-6),
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


AUDIO = [
    "R9_ZSCveAHg_7s.wav",
    "R9_ZSCveAHg_7s.mp3",
    "metro_station_paris.wav",
    "speech_female_librispeech.ogg",
    "trumpet_solo.ogg",
    "whale_humpback.ogg",
]


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
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


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
def test_bad_input_is_refused_with_a_reason(
    data: bytes, error: type[AudioError], words: str
) -> None:
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


def test_flac_of_unknown_length_is_read_and_limited_while_decoding() -> None:
    """total_samples = 0 (a FLAC written to a pipe) was refused as 288230376151711.8 s."""
    x = sine(440, 3.0, RATE)
    data = unknown_length_flac(x, RATE)
    out = decode(data, RATE, 60)
    assert out.duration_s == pytest.approx(3.0)
    assert np.max(np.abs(out.waveform - x)) < 1e-4
    with pytest.raises(AudioTooLong, match="longer than the limit of 2 s"):
        decode(data, RATE, 2)


@pytest.mark.parametrize("peak", [1e30, 3e38, -4.7e18, MAX_ABS_SAMPLE * 1.01])
def test_float_samples_beyond_the_bound_are_refused(peak: float) -> None:
    """Finite floats near 1e18 overflow the model's power spectrum: null scores before."""
    x = sine(440, 1.0, RATE)
    x[RATE // 2] = peak
    with pytest.raises(AudioError, match=rf"must lie within \+-{MAX_ABS_SAMPLE:g} ") as info:
        decode(encode(x, RATE, "WAV", "FLOAT"), RATE, 60)
    assert f"{abs(peak):.3g}" in info.value.message and info.value.status == 400


def test_float_samples_at_the_bound_are_accepted() -> None:
    x = np.sign(sine(1000, 1.0, RATE)) * np.float32(MAX_ABS_SAMPLE)
    out = decode(encode(x, RATE, "WAV", "FLOAT"), RATE, 60)
    assert np.abs(out.waveform).max() == MAX_ABS_SAMPLE


@pytest.mark.slow
def test_the_sample_bound_keeps_every_variant_finite(variants_bundle: Path) -> None:
    """The loudest signals the bound admits give finite scores in fp32, fp16 and int8."""
    t = np.arange(2 * RATE) / RATE
    loudest = np.stack(
        [
            np.sign(np.sin(2 * np.pi * 1000 * t)),
            np.sin(2 * np.pi * 60 * t),
            np.random.default_rng(0).uniform(-1, 1, t.size),
            np.ones(t.size),
        ]
    )
    precisions: tuple[Precision, ...] = ("fp32", "fp16", "int8")
    for precision in precisions:
        options = BackendOptions(device="cpu", precision=precision, threads=1)
        engine = OrtBackend(variants_bundle, options)
        outputs = engine.run((MAX_ABS_SAMPLE * loudest).astype(np.float32))
        assert all(np.isfinite(v).all() for v in outputs.values()), precision


FOREIGN = [
    (adts_aac(), "AAC (ADTS)"),
    (adts_aac()[:7] + bytes([0xFF, 0xF9]) + bytes(300), "AAC (ADTS)"),  # MPEG-2 AAC
    (id3_tag() + adts_aac(), "AAC (ADTS)"),
    (bytes(4) + b"ftypM4A " + bytes(200), "MP4/M4A"),
    (b"\x1aE\xdf\xa3" + bytes(200), "Matroska/WebM"),
]


@pytest.mark.parametrize(("data", "name"), FOREIGN)
def test_foreign_containers_are_named_as_unsupported(data: bytes, name: str) -> None:
    """AAC was answered 'cannot decode this MP3 file' (400): it is a format we do not take."""
    with pytest.raises(UnsupportedFormat) as info:
        decode(data, RATE, 60)
    assert info.value.status == 415 and info.value.message.startswith(f"{name} audio is not")


LEAKS = ("internal", "psf_", "sf_", "error :", "unspecified", "unknown error", "bytesio")


def _mutations() -> list[bytes]:
    """Seeded damage (bytes changed in the header and the stream, cuts) to four formats."""
    rng = np.random.default_rng(7)
    sources = [
        encode(noise(0.5, 3, 44100), 44100, fmt, sub)
        for fmt, sub in (("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("WAV", "PCM_24"))
    ]
    cases = [with_byte(sources[0], 34, 0), with_byte(sources[1], 6, 1)]  # both leaked before
    for i in range(120):
        data = bytearray(sources[i % len(sources)])
        for _ in range(1 + i % 4):
            data[int(rng.integers(0, 120 if i % 2 else len(data)))] = int(rng.integers(256))
        cases.append(bytes(data[: len(data) - int(rng.integers(0, 2)) * len(data) // 3]))
    return cases


def test_libsndfile_internals_never_reach_the_message() -> None:
    """'Internal psf_fseek() failed', 'Unspecified internal error': say what is wrong."""
    for data in _mutations():
        try:
            out = decode(data, RATE, 60)
        except AudioError as exc:
            assert exc.status in (400, 413, 415) and exc.message
            assert not any(word in exc.message.lower() for word in LEAKS), exc.message
        else:
            assert np.isfinite(out.waveform).all()


def test_decode_takes_any_bytes_like_body_and_returns_one_array() -> None:
    data = encode(noise(2.0, 4, 44100, channels=2), 44100, "WAV", "PCM_16")
    want = decode(data, RATE, 60).waveform
    for body in (bytearray(data), memoryview(data)):
        got = decode(body, RATE, 60).waveform
        np.testing.assert_array_equal(got, want)
        # trimmed in place (or soxr's exact-size array), not a view holding a larger buffer
        assert got.flags.c_contiguous and _held_bytes(got) == got.nbytes


def _held_bytes(array: np.ndarray) -> int:
    """The bytes of the numpy buffer behind ``array`` (itself when it owns its data)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array.nbytes


# Raw PCM (the application/octet-stream door): validated like a decoded upload.


def test_pcm_int16_and_float32_are_scaled_and_mixed() -> None:
    stereo = noise(1.0, 5, RATE, channels=2)
    ints = np.round(stereo * 32767).astype("<i2")
    out = decode_pcm(
        ints.tobytes(),
        sample_rate=RATE,
        channels=2,
        dtype="int16",
        target_rate=RATE,
        max_seconds=60,
    )
    assert (out.format, out.channels, out.source_rate) == ("PCM", 2, RATE)
    np.testing.assert_allclose(out.waveform, ints.mean(axis=1) / 32768, atol=1e-6)
    mono = decode_pcm(
        bytearray(stereo[:, 0].astype("<f4").tobytes()),
        sample_rate=RATE,
        channels=1,
        dtype="float32",
        target_rate=RATE,
        max_seconds=60,
    )
    np.testing.assert_array_equal(mono.waveform, stereo[:, 0])
    assert mono.duration_s == pytest.approx(1.0)


def test_pcm_is_resampled_only_when_the_rate_differs() -> None:
    x = sine(1234.0, 2.0, 48000)
    out = decode_pcm(
        memoryview(x.tobytes()),
        sample_rate=48000,
        channels=1,
        dtype="float32",
        target_rate=RATE,
        max_seconds=60,
    )
    assert out.source_rate == 48000 and out.waveform.shape[0] == pytest.approx(2 * RATE, abs=2)
    assert peak_hz(out.waveform, RATE) == pytest.approx(1234.0, abs=1.0)


def _pcm(data: bytes, **kw: object) -> None:
    args: dict[str, object] = {
        "sample_rate": RATE,
        "channels": 1,
        "dtype": "float32",
        "target_rate": RATE,
        "max_seconds": 2,
        **kw,
    }
    decode_pcm(data, **args)  # type: ignore[arg-type]


ONE_S = sine(440, 1.0, RATE)
NAN_PCM = ONE_S.copy()
NAN_PCM[7] = np.nan
BAD_PCM = [
    (ONE_S.tobytes(), {"sample_rate": 500}, AudioError, "sample rate 500 Hz"),
    (ONE_S.tobytes(), {"channels": 0}, AudioError, "0 channels"),
    (ONE_S.tobytes(), {"channels": 65}, AudioError, "at most 64"),
    (ONE_S.tobytes(), {"dtype": "int8"}, AudioError, "int16 or float32"),
    (ONE_S.tobytes()[:-2], {}, AudioError, "not a whole number of frames"),
    (ONE_S.tobytes(), {"channels": 3}, AudioError, "3 float32 channel(s) is 12 bytes"),
    (b"", {}, EmptyAudio, "empty"),
    (np.zeros(3 * RATE, np.float32).tobytes(), {}, AudioTooLong, "3.0 s long"),
    (NAN_PCM.tobytes(), {}, AudioError, "NaN or infinite"),
    ((ONE_S * 1e6).tobytes(), {}, AudioError, "must lie within"),
]


@pytest.mark.parametrize(("data", "kw", "error", "words"), BAD_PCM)
def test_bad_pcm_is_refused_with_a_reason(
    data: bytes, kw: dict[str, object], error: type[AudioError], words: str
) -> None:
    with pytest.raises(error) as info:
        _pcm(data, **kw)
    assert words in info.value.message


def test_decode_cost_is_bounded_by_rate_and_channels() -> None:
    """A file that is short in seconds but costly to decode (384 kHz x 8) has a lower limit."""
    from service.core.audiocheck import MAX_DECODE_SAMPLES, AudioTooLong, decode_limit_s

    limit = decode_limit_s(384_000, 8, 600.0)
    assert limit == pytest.approx(MAX_DECODE_SAMPLES / (384_000 * 8))
    assert decode_limit_s(32_000, 1, 600.0) == 600.0
    frames = int((limit + 1) * 384_000)
    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, 8), np.int16), 384_000, format="FLAC")
    with pytest.raises(AudioTooLong, match="at this sample rate and channel count"):
        decode(buf.getvalue(), 32_000, 600.0)
