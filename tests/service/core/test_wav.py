"""The WAV container: a streamed WAV without a data size, and the numpy plain-WAV path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from service.core.audio import decode
from service.core.audiocheck import AudioTooLong
from tests.service.audio_files import streamed_wav
from tests.service.conftest import RATE, sine


@pytest.mark.parametrize(("size", "riff"), [(0, None), (0, 0), (0xFFFFFFFF, None)])
def test_streamed_wav_without_a_data_size_is_read_to_the_end(size: int, riff: int | None) -> None:
    """A data size of 0 (streamed WAV) gave empty_audio although the file holds 1 s."""
    x = sine(440, 1.0, RATE)
    out = decode(streamed_wav(x, RATE, size, riff), RATE, 60)
    assert out.duration_s == pytest.approx(1.0)
    assert np.max(np.abs(out.waveform - x)) < 1e-4
    too_long = streamed_wav(np.zeros(RATE * 5, np.float32), RATE, size, riff)
    with pytest.raises(AudioTooLong, match="limit"):
        decode(too_long, RATE, 4)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype"),
    [
        (32000, 1, "PCM_16"),
        (44100, 2, "PCM_16"),
        (48000, 6, "FLOAT"),
        (16000, 1, "FLOAT"),
        (44100, 2, "PCM_24"),
    ],
)
def test_plain_wav_fast_path_equals_libsndfile(rate: int, channels: int, subtype: str) -> None:
    """16-bit and float WAV are read with numpy: the very numbers libsndfile gives."""
    from service.core import audio, wav

    rng = np.random.default_rng(rate + channels)
    x = (0.3 * rng.standard_normal((rate * 3, channels))).clip(-1, 1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    data = buf.getvalue()
    fast = audio.decode(data, 32000, 60.0)
    with audio._opened(data, None) as (handle, name):  # the libsndfile path, forced
        sink = audio.MonoSink(rate, 32000, handle.frames)
        for block in audio._blocks(handle, name, 60.0):
            sink.push(block)
    slow = sink.finish()
    assert (wav.plain_wav(data, 32000, 60.0) is None) == (subtype == "PCM_24")
    np.testing.assert_array_equal(fast.waveform, slow)
    assert fast.channels == channels and fast.source_rate == rate and fast.format == "WAV"
