"""Hand-made audio files for the bad-input tests: what real encoders and pipes produce.

No ffmpeg or sox needed: each file is written by soundfile, then its header is edited the way
a streaming encoder leaves it (a pipe cannot be seeked back to fill in the length).
"""

from __future__ import annotations

import struct

import numpy as np

from tests.service.conftest import encode

# An ADTS frame header: sync 0xFFF, MPEG-4, layer 00, no CRC; AAC LC, 44.1 kHz, stereo,
# frame length 7 + 100 bytes. Libraries that only look for MPEG sync take it for MP3.
ADTS_HEADER = bytes([0xFF, 0xF1, 0x50, 0x80, 0x0D, 0x7F, 0xFC])


def adts_aac(frames: int = 20) -> bytes:
    return (ADTS_HEADER + bytes(100)) * frames


def id3_tag(payload_size: int = 32) -> bytes:
    """An ID3v2.4 tag header (syncsafe size) with ``payload_size`` zero bytes."""
    size = bytes((payload_size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + size + bytes(payload_size)


def unknown_length_flac(x: np.ndarray, rate: int) -> bytes:
    """A FLAC whose STREAMINFO says total_samples = 0 ("unknown"), as piped encoders write."""
    data = bytearray(encode(x, rate, "FLAC", "PCM_16"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO is the first block
    at = 8 + 10  # block header, then min/max block size (2+2) and frame size (3+3)
    fields = int.from_bytes(data[at : at + 8], "big")  # rate 20 | ch 3 | bits 5 | total 36
    data[at : at + 8] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(data)


def streamed_wav(x: np.ndarray, rate: int, size: int = 0, riff: int | None = None) -> bytes:
    """A 16-bit WAV whose 'data' chunk size is ``size`` (0 or 0xFFFFFFFF from a stream)."""
    data = bytearray(encode(x, rate, "WAV", "PCM_16"))
    at = data.index(b"data") + 4
    data[at : at + 4] = struct.pack("<I", size)
    if riff is not None:
        data[4:8] = struct.pack("<I", riff)
    return bytes(data)


def with_byte(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    out[offset] = value
    return bytes(out)
