"""What libsndfile reads an upload from: a memfd copy, or virtual I/O over the buffer."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest

from service.core.audio import decode
from tests.service.conftest import RATE, encode, sine


def _size_zero_24_bit(x: np.ndarray) -> bytes:
    """A 24-bit WAV (libsndfile's path) whose data size says 0: decoded through a patch."""
    data = bytearray(encode(x, RATE, "WAV", "PCM_24"))
    at = data.index(b"data") + 4
    data[at : at + 4] = struct.pack("<I", 0)
    return bytes(data)


@pytest.mark.parametrize(
    ("make", "rate"),
    [
        (lambda x: encode(x, 44100, "MP3", "MPEG_LAYER_III"), 44100),
        (lambda x: encode(x, 44100, "OGG", "VORBIS"), 44100),
        (lambda x: encode(x, 44100, "FLAC", "PCM_16"), 44100),
        (_size_zero_24_bit, RATE),
    ],
    ids=["mp3", "ogg", "flac", "wav24-patched"],
)
def test_libsndfile_reads_a_memory_file_as_it_reads_the_buffer(
    make: Callable[[np.ndarray], bytes], rate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libsndfile reads a memfd copy of the upload (no Python callbacks, GIL released) or,
    past ``MEMFD_MAX_BYTES``, the buffer itself through virtual I/O: the same samples."""
    from service.core import sndinput

    data = make(sine(440, 2.0, rate))
    opened: list[int | None] = []
    real_memfd = sndinput._memfd

    def recording(data: bytes, patch: tuple[int, bytes] | None) -> int | None:
        opened.append(real_memfd(data, patch))
        return opened[-1]

    monkeypatch.setattr(sndinput, "_memfd", recording)
    via_memfd = decode(data, RATE, 60).waveform
    assert isinstance(opened[-1], int)  # the memory file was used
    monkeypatch.setattr(sndinput, "MEMFD_MAX_BYTES", 0)
    via_callbacks = decode(data, RATE, 60).waveform
    assert opened[-1] is None  # no memory file: virtual I/O
    np.testing.assert_array_equal(via_memfd, via_callbacks)
    assert via_memfd.shape[0] > RATE
