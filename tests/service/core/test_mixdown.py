"""Mix-down and resampling: the channel mean, and one-call resampling equal to the stream."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.mixdown import mix_into
from tests.service.conftest import RATE


@pytest.mark.parametrize("channels", [1, 2, 3, 6])
def test_mixdown_is_the_channel_mean(channels: int) -> None:
    rng = np.random.default_rng(channels)
    block = rng.uniform(-1, 1, (1000, channels)).astype(np.float32)
    out = np.empty(1000, np.float32)
    mix_into(block, out)
    np.testing.assert_allclose(out, block.astype(np.float64).mean(axis=1), atol=1e-6)
    ints = (block * 32767).astype(np.int16)  # int16 adds in float32: no wrap-around
    mix_into(ints, out, 1 / 32768)
    np.testing.assert_allclose(out, ints.mean(axis=1) / 32768, atol=1e-6)


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000])
def test_a_whole_block_resamples_to_the_same_samples_as_the_stream(rate: int) -> None:
    """In-memory audio is resampled in one call; the streamed path (blocks) must agree."""
    from service.core.mixdown import MonoSink, mono_at

    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal((rate * 10 + 17, 2))).astype(np.float32)
    whole = mono_at(x, rate, RATE)
    streamed = MonoSink(rate, RATE, x.shape[0])
    for first in range(0, x.shape[0], 65536):
        streamed.push(x[first : first + 65536])
    np.testing.assert_array_equal(whole, streamed.finish())


@pytest.mark.parametrize("dtype", ["<i2", "<i4", "<f4", "<f8"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_mixdown_adds_the_columns_in_float32_then_scales(dtype: str, channels: int) -> None:
    """Bit for bit: each column cast to float32 and added in order, then one scale (what a
    decoder's int16, int32 or float block gives), whatever the column's type or stride."""
    rng = np.random.default_rng(channels)
    frames = rng.uniform(-30000, 30000, (4801, channels))
    block = frames.astype(dtype) if dtype[1] != "f" else (frames / 30000).astype(dtype)
    want = block[:, 0].astype(np.float32)
    for c in range(1, channels):
        want = want + block[:, c].astype(np.float32)
    want *= np.float32(0.5 / channels)
    got = np.empty(len(block), np.float32)
    mix_into(block, got, 0.5)
    np.testing.assert_array_equal(got, want)
