"""The WAV (RIFF) container: headers that lie, and 16-bit or float WAV read with numpy.

``check_wav_header`` answers a lying header clearly before libsndfile reads a sample;
``plain_wav`` decodes the most common uploads without libsndfile.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from service.core.audiocheck import (
    MAX_CHANNELS,
    PCM_DTYPES,
    AudioError,
    AudioTooLong,
    Decoded,
    EmptyAudio,
    UndecodableAudio,
    check_rate,
    decode_limit_s,
    too_long,
)
from service.core.mixdown import Alloc, heap, to_mono
from service.core.sndinput import Buffer


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


def check_wav_header(data: Buffer, max_seconds: float) -> tuple[int, bytes] | None:
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
    """True when ``data`` is a WAV that ``plain_wav`` reads with numpy at ``rate`` (no
    resampling): its decode costs a copy and a multiply, less than handing it to a thread."""
    fmt = _wav_format(data)
    return fmt is not None and _plain_dtype(fmt) is not None and fmt.rate == rate


def _plain_dtype(fmt: _WavFormat) -> tuple[str, float] | None:
    """(dtype, scale) when numpy reads these samples as they are; None for libsndfile."""
    plain = _PLAIN_WAV.get((fmt.tag, fmt.bits))
    if fmt.align != fmt.channels * fmt.bits // 8 or not 1 <= fmt.channels <= MAX_CHANNELS:
        return None
    return plain


def plain_wav(
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
        raise too_long(frames / rate, limit, max_seconds)
    dtype, scale = plain
    samples = np.frombuffer(data, dtype, frames * channels, start).reshape(frames, channels)
    wave = to_mono(samples, rate, target_rate, scale, alloc)
    return Decoded(wave, rate, channels, "WAV", wave.shape[0] / target_rate)
