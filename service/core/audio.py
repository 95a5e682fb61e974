"""Decode uploads to a mono float32 waveform at the model's rate, refusing bad input early.

Limits are checked from the header BEFORE any sample is read (a header claiming hours is
refused without decoding), and again while reading (a header that understates its length
cannot smuggle more than the limit through). Decoding and resampling are streamed in blocks,
so memory stays bounded by the decoded mono output.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from service.core.errors import TaggingError

MIN_RATE, MAX_RATE = 1000, 384_000
MAX_CHANNELS = 64
BLOCK_FRAMES = 1 << 16
# soundfile's major formats that the API promises; others are refused with 415.
SUPPORTED = {
    "WAV": "WAV",
    "WAVEX": "WAV",
    "RF64": "WAV",
    "FLAC": "FLAC",
    "OGG": "Ogg",
    "MP3": "MP3",
}


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


def _sniff(data: bytes) -> str | None:
    """The container the first bytes announce, or None."""
    if data[:4] in (b"RIFF", b"RIFX", b"RF64"):
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "Ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3"
    return None


def _riff_chunks(data: bytes) -> dict[bytes, tuple[int, int]]:
    """RIFF chunk id -> (payload offset, declared size), first occurrence of each."""
    chunks: dict[bytes, tuple[int, int]] = {}
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunks.setdefault(chunk, (pos + 8, size))
        if chunk == b"data":
            break
        pos += 8 + size + (size & 1)
    return chunks


def check_wav_header(data: bytes, max_seconds: float) -> None:
    """Clear answers for WAV headers that lie: 0 channels, absurd rates, hours of audio
    claimed, more data declared than the file holds. Checked before any sample is read."""
    chunks = _riff_chunks(data)
    if b"fmt " not in chunks:
        return  # libsndfile reports the missing chunk
    at, _ = chunks[b"fmt "]
    if at + 16 > len(data):
        raise UndecodableAudio("the WAV 'fmt ' chunk is truncated")
    channels, rate, _, align = struct.unpack("<HIIH", data[at + 2 : at + 14])
    if channels == 0:
        raise AudioError("the WAV header declares 0 channels")
    _check_rate(rate)
    if b"data" not in chunks or align == 0:
        return
    at, size = chunks[b"data"]
    if size in (0, 0xFFFFFFFF):  # unknown length (streamed recording): trust the file size
        return
    claimed = size / align / rate
    if claimed > max_seconds:
        raise AudioTooLong(
            f"the WAV header claims {claimed:.1f} s of audio: the limit is {max_seconds:g} s"
        )
    held = len(data) - at
    if size > held:
        raise UndecodableAudio(
            f"the WAV header declares {claimed:.2f} s of audio but the file holds only "
            f"{held / align / rate:.2f} s (truncated file or lying header)"
        )


def _check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")


def _reason(exc: Exception) -> str:
    """libsndfile's reason, without its file-name noise (uploads are in memory)."""
    text = getattr(exc, "error_string", None) or str(exc)
    if "does not exist" in text or "not a regular file" in text:
        return "the data is corrupt or not in this format"
    return str(text).rstrip(".")


def _open(data: bytes, max_seconds: float) -> tuple[sf.SoundFile, str]:
    sniffed = _sniff(data)
    if data[:4] == b"RIFF":
        check_wav_header(data, max_seconds)
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        if sniffed is None:
            raise UnsupportedFormat(
                "unrecognised audio format: send WAV, FLAC, Ogg Vorbis/Opus or MP3"
            ) from exc
        raise UndecodableAudio(f"cannot decode this {sniffed} file: {_reason(exc)}") from exc
    name = SUPPORTED.get(handle.format)
    if name is None:
        handle.close()
        raise UnsupportedFormat(
            f"{handle.format} audio is not supported: send WAV, FLAC, Ogg Vorbis/Opus or MP3"
        )
    return handle, name


def _check_header(handle: sf.SoundFile, max_seconds: float) -> None:
    if handle.channels < 1:
        raise AudioError("the file declares 0 channels")
    if handle.channels > MAX_CHANNELS:
        raise AudioError(f"{handle.channels} channels: at most {MAX_CHANNELS} are accepted")
    _check_rate(handle.samplerate)
    claimed = handle.frames / handle.samplerate
    if handle.frames > 0 and claimed > max_seconds:
        raise AudioTooLong(f"audio is {claimed:.1f} s long: the limit is {max_seconds:g} s")


def _read_mono(handle: sf.SoundFile, max_seconds: float, target_rate: int) -> np.ndarray:
    """Stream blocks: check finiteness, mix to mono, resample; stop past the limit."""
    rate = handle.samplerate
    limit = int(max_seconds * rate)
    stream = (
        None
        if rate == target_rate
        else soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    )
    pieces: list[np.ndarray] = []
    read = 0
    while True:
        block = handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        read += block.shape[0]
        if read > limit:
            raise AudioTooLong(f"audio is longer than the limit of {max_seconds:g} s")
        if not np.isfinite(block).all():
            raise AudioError("audio contains NaN or infinite samples")
        mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        pieces.append(mono if stream is None else stream.resample_chunk(mono))
    if read == 0:
        raise EmptyAudio("the file contains no audio samples")
    if stream is not None:
        pieces.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


def decode(data: bytes, target_rate: int, max_seconds: float) -> Decoded:
    """Decode an upload; raise an ``AudioError`` subclass naming what is wrong."""
    if not data:
        raise EmptyAudio("the file is empty (0 bytes)")
    handle, name = _open(data, max_seconds)
    with handle:
        _check_header(handle, max_seconds)
        try:
            wave = _read_mono(handle, max_seconds, target_rate)
        except sf.LibsndfileError as exc:
            raise UndecodableAudio(f"cannot decode this {name} file: {_reason(exc)}") from exc
        read_s = wave.shape[0] / target_rate
        return Decoded(wave, handle.samplerate, handle.channels, name, read_s)


def decode_pcm(
    data: bytes | memoryview,
    *,
    sample_rate: int,
    channels: int,
    dtype: str,
    target_rate: int,
    max_seconds: float,
) -> Decoded:
    """Raw interleaved PCM (int16 or float32) to mono float32 at ``target_rate``."""
    _check_rate(sample_rate)
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"channels must be in 1..{MAX_CHANNELS}")
    width = 2 if dtype == "int16" else 4
    if len(data) == 0:
        raise EmptyAudio("the body is empty (0 bytes)")
    if len(data) % (width * channels):
        raise AudioError(
            f"{len(data)} bytes is not a whole number of {channels}-channel {dtype} frames"
        )
    frames = len(data) // (width * channels)
    if frames / sample_rate > max_seconds:
        raise AudioTooLong(
            f"audio is {frames / sample_rate:.1f} s long: the limit is {max_seconds:g} s"
        )
    raw = np.frombuffer(data, "<i2" if dtype == "int16" else "<f4").reshape(frames, channels)
    block = raw.astype(np.float32) * np.float32(1 / 32768) if dtype == "int16" else raw
    if not np.isfinite(block).all():
        raise AudioError("audio contains NaN or infinite samples")
    mono = block[:, 0] if channels == 1 else block.sum(axis=1, dtype=np.float32) / channels
    if sample_rate != target_rate:
        mono = soxr.resample(mono, sample_rate, target_rate, quality="HQ")
    wave = np.ascontiguousarray(mono, dtype=np.float32)
    return Decoded(wave, sample_rate, channels, "PCM", wave.shape[0] / target_rate)
