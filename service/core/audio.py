"""Decode uploads to a mono float32 waveform at the model's rate, refusing bad input early.

Limits are checked from the header BEFORE any sample is read (a header claiming hours is
refused without decoding), and again while reading (a header that understates its length, or
a stream that declares none, cannot smuggle more than the limit through).

Memory: libsndfile reads the upload where it lies (no copy of the body) and every block is
mixed down (and resampled) straight into one output array sized from the header
(``mixdown.MonoSink``), so a decode holds the upload plus one float32 mono copy.

The WAV container is parsed in ``service.core.wav``; the limits, errors and checks that
every decoder shares are in ``service.core.audiocheck``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import numpy as np
import soundfile as sf

from service.core.audiocheck import (
    PCM_DTYPES,
    AudioError,
    AudioTooLong,
    Decoded,
    EmptyAudio,
    UndecodableAudio,
    UnsupportedFormat,
    check_channels,
    check_rate,
    check_samples,
    decode_limit_s,
    too_long,
)
from service.core.mixdown import Alloc, MonoSink, heap, to_mono
from service.core.sndinput import Buffer, sound_file
from service.core.wav import check_wav_header, plain_wav

BLOCK_FRAMES = 1 << 16
# libsndfile subtypes whose samples decode into [-1, 1]: no value check needed.
_BOUNDED = {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW", "IMA_ADPCM",
            "MS_ADPCM", "GSM610"}  # fmt: skip
# soundfile's major formats that the API promises; others are refused with 415.
SUPPORTED = {"WAV": "WAV", "WAVEX": "WAV", "RF64": "WAV", "FLAC": "FLAC", "OGG": "Ogg",
             "MP3": "MP3"}  # fmt: skip
_SEND = "send WAV, FLAC, Ogg Vorbis/Opus or MP3"
# Containers libsndfile cannot open, named so that the 415 says what was sent.
_FOREIGN = ((4, b"ftyp", "MP4/M4A"), (0, b"\x1aE\xdf\xa3", "Matroska/WebM"),
            (0, b"0&\xb2u\x8ef\xcf\x11", "WMA/ASF"), (0, b"#!AMR", "AMR"))  # fmt: skip
UNKNOWN_LENGTH = (1 << 63) - 1  # libsndfile's frame count for a stream that declares none


def _is_adts(head: bytes) -> bool:
    """An AAC ADTS frame: 12 sync bits like MPEG audio, but layer bits 00 (MP3's 'reserved')."""
    return len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0


def _sniff(data: Buffer, depth: int = 0) -> str | None:
    """The container the first bytes announce (looking past an ID3 tag), or None."""
    head = bytes(data[:12])
    if head[:3] == b"ID3" and len(head) >= 10 and depth == 0:
        size = sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        return _sniff(data[10 + size :], depth + 1) or "MP3"
    if head[:4] in (b"RIFF", b"RIFX", b"RF64"):
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "Ogg"
    if _is_adts(head):
        return "AAC (ADTS)"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "MP3"
    return next((n for at, magic, n in _FOREIGN if head[at : at + len(magic)] == magic), None)


# libsndfile's words that describe its own internals, not the file: said plainly instead.
_PLAIN = (
    ("lost sync", "the audio data is corrupt (the decoder lost sync)"),
    ("malformed", "the file is malformed"),
    ("format not recognised", "the data is corrupt or not in this format"),
    ("does not exist", "the data is corrupt or not in this format"),
    ("not a regular file", "the data is corrupt or not in this format"),
    ("no 'data' chunk", "the file has no 'data' chunk"),
)


def _reason(exc: Exception) -> str:
    """libsndfile's reason in plain words: no file names, no internal function names."""
    text = str(getattr(exc, "error_string", None) or exc).strip().rstrip(".")
    lowered = text.lower()
    for needle, plain in _PLAIN:
        if needle in lowered:
            return plain
    if any(w in lowered for w in ("internal", "psf_", "sf_", "unknown error", "unspecified")):
        return "the data is corrupt or truncated"
    for prefix in ("Error : ", "Error in WAV/W64/RF64 file. ", "Error in WAV file. "):
        text = text.removeprefix(prefix)
    return text


def _undecodable(name: str, exc: Exception) -> AudioError:
    unimplemented = "unimplemented format" in str(getattr(exc, "error_string", None) or exc)
    if unimplemented and name in ("WAV", "Ogg"):  # containers that carry many codecs
        return UnsupportedFormat(f"this {name} file holds an audio encoding that is not supported")
    return UndecodableAudio(f"cannot decode this {name} file: {_reason(exc)}")


@contextlib.contextmanager
def _opened(data: Buffer, patch: tuple[int, bytes] | None) -> Iterator[tuple[sf.SoundFile, str]]:
    """libsndfile on ``data``, with ``patch`` (``check_wav_header``'s) laid over it, and the
    format's name; closed on exit."""
    sniffed = _sniff(data)
    if sniffed is not None and sniffed not in SUPPORTED.values():
        raise UnsupportedFormat(f"{sniffed} audio is not supported: {_SEND}")
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(sound_file(data, patch))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            if sniffed is None:
                raise UnsupportedFormat(f"unrecognised audio format: {_SEND}") from exc
            raise _undecodable(sniffed, exc) from exc
        name = SUPPORTED.get(handle.format)
        if name is None:
            raise UnsupportedFormat(f"{handle.format} audio is not supported: {_SEND}")
        yield handle, name


def _read_into(handle: sf.SoundFile, block: np.ndarray, name: str) -> int:
    """Up to ``len(block)`` frames, decoded by libsndfile straight into ``block``.

    soundfile's own ``read`` seeks back to its position after every read, which fails on a
    stream of unknown length (a FLAC written to a pipe: "psf_fseek() failed"), so this calls
    libsndfile's ``sf_readf_float`` through soundfile's (private, long-stable) binding.
    """
    ptr = sf._ffi.cast("float *", block.ctypes.data)
    frames = int(sf._snd.sf_readf_float(handle._file, ptr, block.shape[0]))
    error = sf._snd.sf_error(handle._file)
    if error:
        raise _undecodable(name, sf.LibsndfileError(error))
    return frames


def _known_length(handle: sf.SoundFile) -> bool:
    return 0 < handle.frames < UNKNOWN_LENGTH


def _check_header(handle: sf.SoundFile, max_seconds: float) -> float:
    """Validate the header; the duration limit that applies to this file."""
    check_channels(handle.channels)
    check_rate(handle.samplerate)
    limit = decode_limit_s(handle.samplerate, handle.channels, max_seconds)
    claimed = handle.frames / handle.samplerate
    if _known_length(handle) and claimed > limit:
        raise too_long(claimed, limit, max_seconds)
    return limit


def _blocks(handle: sf.SoundFile, name: str, max_seconds: float) -> Iterator[np.ndarray]:
    """Checked (frames, channels) float32 blocks; ``AudioTooLong`` once past the limit."""
    check = handle.subtype not in _BOUNDED
    limit = int(max_seconds * handle.samplerate)
    block = np.empty((BLOCK_FRAMES, handle.channels), np.float32)
    read = 0
    while frames := _read_into(handle, block, name):
        read += frames
        if read > limit:
            raise AudioTooLong(f"audio is longer than the limit of {max_seconds:g} s")
        if check:
            check_samples(block[:frames])
        yield block[:frames]


def decode(data: Buffer, target_rate: int, max_seconds: float, alloc: Alloc = heap) -> Decoded:
    """Decode an upload; raise an ``AudioError`` subclass naming what is wrong. ``alloc``
    gives the waveform's memory where it is written whole (a WAV read without libsndfile)."""
    if not len(data):
        raise EmptyAudio("the file is empty (0 bytes)")
    patch = None
    if bytes(data[:4]) == b"RIFF":
        patch = check_wav_header(data, max_seconds)  # the clear answers for lying headers
        plain = plain_wav(data, target_rate, max_seconds, alloc)
        if plain is not None:
            return plain
    with _opened(data, patch) as (handle, name):
        max_seconds = _check_header(handle, max_seconds)
        rate, channels = handle.samplerate, handle.channels
        limit = int(max_seconds * rate)
        expected = min(handle.frames, limit) if _known_length(handle) else limit
        sink = MonoSink(rate, target_rate, expected)
        for block in _blocks(handle, name, max_seconds):
            sink.push(block)
    wave = sink.finish()
    if wave.shape[0] == 0:
        raise EmptyAudio("the file contains no audio samples")
    return Decoded(wave, rate, channels, name, wave.shape[0] / target_rate)


def decode_pcm(
    data: Buffer,
    *,
    sample_rate: int,
    channels: int,
    dtype: Literal["int16", "float32"],
    target_rate: int,
    max_seconds: float,
    alloc: Alloc = heap,
) -> Decoded:
    """Raw interleaved little-endian PCM (no container) to the model's mono waveform.

    Validated like a decoded upload (rate, channels, length limit; NaN/inf and the sample
    bound for float32); int16 is scaled by 1/32768; resampled only when the rate differs.
    """
    check_rate(sample_rate)
    check_channels(channels)
    if dtype not in PCM_DTYPES:
        raise AudioError(f"dtype {dtype!r} is not supported: send int16 or float32")
    code, scale = PCM_DTYPES[dtype]
    view = memoryview(data).cast("B")
    frame_bytes = channels * np.dtype(code).itemsize
    if view.nbytes == 0:
        raise EmptyAudio("the body is empty (0 bytes)")
    if view.nbytes % frame_bytes:
        raise AudioError(
            f"the body holds {view.nbytes} bytes, not a whole number of frames: a frame of "
            f"{channels} {dtype} channel(s) is {frame_bytes} bytes"
        )
    frames = view.nbytes // frame_bytes
    limit = decode_limit_s(sample_rate, channels, max_seconds)
    if frames > int(limit * sample_rate):
        raise too_long(frames / sample_rate, limit, max_seconds)
    samples = np.frombuffer(view, dtype=code).reshape(frames, channels)
    wave = to_mono(samples, sample_rate, target_rate, scale, alloc)
    return Decoded(wave, sample_rate, channels, "PCM", wave.shape[0] / target_rate)
