"""Decode uploads to a mono float32 waveform at the model's rate, refusing bad input early.

Limits are checked from the header BEFORE any sample is read (a header claiming hours is
refused without decoding), and again while reading (a header that understates its length, or
a stream that declares none, cannot smuggle more than the limit through).

Memory: libsndfile reads the upload where it lies (no copy of the body) and every block is
mixed down (and resampled) straight into one output array sized from the header
(``mixdown.MonoSink``), so a decode holds the upload plus one float32 mono copy.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import soundfile as sf

from service.core.errors import TaggingError
from service.core.mixdown import Alloc, MonoSink, heap, mono_at
from service.core.sndinput import Buffer, sound_file

MIN_RATE, MAX_RATE = 1000, 384_000
MAX_CHANNELS = 64
BLOCK_FRAMES = 1 << 16
# Samples already in memory (plain WAV, raw PCM) are converted in blocks this large: a 10 s
# clip in one pass. Every block releases and retakes the GIL a few times (numpy, soxr), and
# each of those is a wake-up and a context switch while the event loop holds the GIL.
MEMORY_BLOCK_FRAMES = 1 << 20
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


def _riff_chunks(data: Buffer) -> dict[bytes, tuple[int, int]]:
    """RIFF chunk id -> (payload offset, declared size), first occurrence of each."""
    chunks: dict[bytes, tuple[int, int]] = {}
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = bytes(data[pos : pos + 4]), struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunks.setdefault(chunk, (pos + 8, size))
        if chunk == b"data":
            break
        pos += 8 + size + (size & 1)
    return chunks


def _check_wav_header(data: Buffer, max_seconds: float) -> tuple[int, bytes] | None:
    """Clear answers for WAV headers that lie: 0 channels, absurd rates, hours of audio
    claimed, more data declared than the file holds. Checked before any sample is read.

    A data size of 0 (a recorder that streamed the file and never went back) is replaced
    by what the file holds: the (offset, bytes) patch to lay over the header."""
    chunks = _riff_chunks(data)
    if b"fmt " not in chunks:
        return None  # libsndfile reports the missing chunk
    at, _ = chunks[b"fmt "]
    if at + 16 > len(data):
        raise UndecodableAudio("the WAV 'fmt ' chunk is truncated")
    channels, rate, _, align = struct.unpack("<HIIH", data[at + 2 : at + 14])
    if channels == 0:
        raise AudioError("the WAV header declares 0 channels")
    check_rate(rate)
    if b"data" not in chunks or align == 0:
        return None
    at, size = chunks[b"data"]
    held = len(data) - at
    patch = None
    if size == 0 and held >= align:
        size = min(held, 0xFFFFFFFF) // align * align
        patch = (at - 4, struct.pack("<I", size))
    if size == 0xFFFFFFFF:  # unknown length: libsndfile reads to the end of the file
        return None
    claimed = size / align / rate
    if claimed > max_seconds:
        raise AudioTooLong(
            f"the WAV header claims {claimed:.1f} s of audio: the limit is {max_seconds:g} s"
        )
    if size > held:
        raise UndecodableAudio(
            f"the WAV header declares {claimed:.2f} s of audio but the file holds only "
            f"{held / align / rate:.2f} s (truncated file or lying header)"
        )
    return patch


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


# WAV sample formats read with numpy alone (format tag, bits) -> dtype and scale; the rest
# (24-bit, 8-bit, A-law, ...) go through libsndfile.
_PLAIN_WAV = {(1, 16): PCM_DTYPES["int16"], (3, 32): PCM_DTYPES["float32"]}
_EXTENSIBLE = 0xFFFE


class _WavFormat(NamedTuple):
    tag: int  # the format tag, WAVE_FORMAT_EXTENSIBLE resolved to its sub-format's
    channels: int
    rate: int
    align: int
    bits: int
    data: tuple[int, int]  # the data chunk: payload offset, declared size


def _wav_format(data: Buffer) -> _WavFormat | None:
    """A RIFF/WAVE body's format and data chunk; None when it lacks either."""
    if len(data) < 12 or bytes(data[:4]) != b"RIFF" or bytes(data[8:12]) != b"WAVE":
        return None
    chunks = _riff_chunks(data)
    if b"fmt " not in chunks or b"data" not in chunks:
        return None
    at, fmt_size = chunks[b"fmt "]
    if at + 16 > len(data):
        return None
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", data[at : at + 16])
    if tag == _EXTENSIBLE and fmt_size >= 40 and at + 26 <= len(data):
        tag = struct.unpack("<H", data[at + 24 : at + 26])[0]  # the sub-format GUID's tag
    return _WavFormat(tag, channels, rate, align, bits, chunks[b"data"])


def is_plain_wav_at(data: Buffer, rate: int) -> bool:
    """True when ``data`` is a WAV that ``_plain_wav`` reads with numpy at ``rate`` (no
    resampling): its decode costs a copy and a multiply, less than handing it to a thread."""
    fmt = _wav_format(data)
    return fmt is not None and _plain_dtype(fmt) is not None and fmt.rate == rate


def _plain_dtype(fmt: _WavFormat) -> tuple[str, float] | None:
    """(dtype, scale) when numpy reads these samples as they are; None for libsndfile."""
    plain = _PLAIN_WAV.get((fmt.tag, fmt.bits))
    if fmt.align != fmt.channels * fmt.bits // 8 or not 1 <= fmt.channels <= MAX_CHANNELS:
        return None
    return plain


def _plain_wav(
    data: Buffer, target_rate: int, max_seconds: float, alloc: Alloc = heap
) -> Decoded | None:
    """16-bit PCM and 32-bit float WAV decoded straight from the body with numpy (no
    libsndfile, no per-block callbacks into Python): the most common upload costs a tenth.
    Same numbers as libsndfile (int16 / 32768). None when the file needs libsndfile."""
    fmt = _wav_format(data)
    if fmt is None:
        return None
    plain = _plain_dtype(fmt)
    if plain is None:
        return None
    _, channels, rate, align, _, (start, size) = fmt
    check_rate(rate)
    held = len(data) - start
    if size in (0, 0xFFFFFFFF) or size > held:  # streamed: what the file holds
        size = held
    frames = size // align
    if frames == 0:
        raise EmptyAudio("the file contains no audio samples")
    limit = decode_limit_s(rate, channels, max_seconds)
    if frames > limit * rate:
        raise _too_long(frames / rate, limit, max_seconds)
    dtype, scale = plain
    samples = np.frombuffer(data, dtype, frames * channels, start).reshape(frames, channels)
    wave = _to_mono(samples, rate, target_rate, scale, alloc)
    return Decoded(wave, rate, channels, "WAV", wave.shape[0] / target_rate)


def _to_mono(
    samples: np.ndarray, rate: int, target_rate: int, scale: float, alloc: Alloc = heap
) -> np.ndarray:
    """(frames, channels) samples already in memory as one mono float32 array at
    ``target_rate``; float samples are checked (NaN, inf, the bound)."""
    frames = samples.shape[0]
    if frames <= MEMORY_BLOCK_FRAMES:
        if samples.dtype.kind == "f":
            check_samples(samples)
        return mono_at(samples, rate, target_rate, scale, alloc)
    sink = MonoSink(rate, target_rate, frames)
    for first in range(0, frames, MEMORY_BLOCK_FRAMES):
        block = samples[first : first + MEMORY_BLOCK_FRAMES]
        if block.dtype.kind == "f":
            check_samples(block)
        sink.push(block, scale)
    return sink.finish()


@contextlib.contextmanager
def _opened(data: Buffer, patch: tuple[int, bytes] | None) -> Iterator[tuple[sf.SoundFile, str]]:
    """libsndfile on ``data``, with ``patch`` (``_check_wav_header``'s) laid over it, and the
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


def _known_length(handle: sf.SoundFile) -> bool:
    return 0 < handle.frames < UNKNOWN_LENGTH


def decode_limit_s(rate: int, channels: int, max_seconds: float) -> float:
    """The duration limit for a file of ``rate`` x ``channels``: ``max_seconds``, or less
    where decoding it would cost more than ``MAX_DECODE_SAMPLES`` (a small file can hold
    10 minutes at 384 kHz x 8 channels: 40 s of decoding on 2 cores)."""
    return min(max_seconds, MAX_DECODE_SAMPLES / (rate * channels))


def _too_long(seconds: float, limit: float, max_seconds: float) -> AudioTooLong:
    why = "" if limit >= max_seconds else " at this sample rate and channel count"
    return AudioTooLong(f"audio is {seconds:.1f} s long: the limit is {limit:g} s{why}")


def _check_header(handle: sf.SoundFile, max_seconds: float) -> float:
    """Validate the header; the duration limit that applies to this file."""
    check_channels(handle.channels)
    check_rate(handle.samplerate)
    limit = decode_limit_s(handle.samplerate, handle.channels, max_seconds)
    claimed = handle.frames / handle.samplerate
    if _known_length(handle) and claimed > limit:
        raise _too_long(claimed, limit, max_seconds)
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
        patch = _check_wav_header(data, max_seconds)  # the clear answers for lying headers
        plain = _plain_wav(data, target_rate, max_seconds, alloc)
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
        raise _too_long(frames / sample_rate, limit, max_seconds)
    samples = np.frombuffer(view, dtype=code).reshape(frames, channels)
    wave = _to_mono(samples, sample_rate, target_rate, scale, alloc)
    return Decoded(wave, sample_rate, channels, "PCM", wave.shape[0] / target_rate)
