"""Window cutting, frame stitching and the numbers of the responses (top, events)."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.card import Label
from service.core.results import aggregate, decimate, events, top_entries
from service.core.windows import WindowError, cut, frames_spanning, stitch_frames, window_starts

LABELS = [Label(index=i, mid=f"/m/{i}", display_name=f"class {i}") for i in range(4)]


def test_window_starts_cover_the_audio() -> None:
    assert window_starts(100, 100, 100) == [0]
    assert window_starts(250, 100, 100) == [0, 100, 200]
    assert window_starts(200, 100, 50) == [0, 50, 100]
    assert window_starts(10, 100, 100) == [0]


def test_pad_true_zero_pads_every_window_to_the_window_length() -> None:
    wave = np.arange(1, 251, dtype=np.float32)
    wins = cut(wave, 100, 100, pad=True, min_samples=10)
    assert [(w.start, w.end) for w in wins] == [(0, 100), (100, 200), (200, 250)]
    assert all(w.samples.shape == (100,) for w in wins)
    assert np.array_equal(wins[2].samples[:50], wave[200:]) and not wins[2].samples[50:].any()


def test_pad_false_scores_the_tail_at_its_own_length() -> None:
    wave = np.arange(250, dtype=np.float32)
    wins = cut(wave, 100, 100, pad=False, min_samples=10)
    assert [w.samples.shape[0] for w in wins] == [100, 100, 50]
    short = cut(wave[:30], 100, 100, pad=False, min_samples=10)
    assert len(short) == 1 and np.array_equal(short[0].samples, wave[:30])


def test_pad_false_tail_shorter_than_the_model_minimum_starts_earlier() -> None:
    wave = np.arange(205, dtype=np.float32)
    tail = cut(wave, 100, 100, pad=False, min_samples=20)[-1]
    assert (tail.start, tail.end) == (185, 205) and np.array_equal(tail.samples, wave[185:])


def test_pad_false_refuses_audio_shorter_than_the_model_minimum() -> None:
    with pytest.raises(WindowError, match="at least 20 samples"):
        cut(np.zeros(5, np.float32), 100, 100, pad=False, min_samples=20)


def test_stitch_places_windows_in_time_and_takes_the_max_in_overlaps() -> None:
    rate, fps = 100, 10.0  # 10 samples per frame
    wave_len = 300
    wins = cut(np.zeros(wave_len, np.float32), 200, 100, pad=True, min_samples=1)
    assert [(w.start, w.end) for w in wins] == [(0, 200), (100, 300)]
    frames = [np.full((21, 2), v, np.float32) for v in (0.1, 0.5)]
    out = stitch_frames(frames, wins, rate, fps, wave_len)
    assert out.shape == (30, 2)
    assert np.allclose(out[:10], 0.1) and np.allclose(out[10:30], 0.5)


def test_top_entries_sorted_and_thresholded() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7], np.float32)
    top = top_entries(scores, LABELS, 3)
    assert [t.index for t in top] == [1, 3, 2] and top[0].label == "class 1"
    assert [t.index for t in top_entries(scores, LABELS, 3, threshold=0.6)] == [1, 3]


def test_aggregate_and_decimate() -> None:
    rows = np.array([[0.1, 0.8], [0.5, 0.2]], np.float32)
    assert np.allclose(aggregate(rows, "max"), [0.5, 0.8])
    assert np.allclose(aggregate(rows, "mean"), [0.3, 0.5])
    frames = np.arange(10, dtype=np.float32)[:, None]
    assert decimate(frames, 4)[:, 0].tolist() == [3, 7, 9]


def test_events_from_threshold_and_minimum_duration() -> None:
    frames = np.zeros((100, 4), np.float32)
    frames[10:30, 2] = 0.8  # 0.2 s at 100 fps
    frames[15, 2] = 0.95
    frames[50:52, 1] = 0.9  # 0.02 s: shorter than the minimum
    frames[90:, 3] = 0.6  # runs to the end
    found = events(frames, LABELS, 100.0, 0.5, 0.05, duration_s=0.995)
    assert [(e.index, e.start_s, e.end_s) for e in found] == [(2, 0.1, 0.3), (3, 0.9, 0.995)]
    assert found[0].peak == pytest.approx(0.95)


def test_frames_are_counted_from_samples_exactly() -> None:
    """Whole frames come out whole: 1.1 s at 32 kHz is 110 frames at 100 fps, not 111
    (``35200 / 32000 * 100`` is 110.00000000000001), and a part of a frame counts."""
    assert frames_spanning(35_200, 32_000, 100) == 110
    assert frames_spanning(2_240, 32_000, 100) == 7
    assert frames_spanning(64_000, 32_000, 100) == 200
    assert frames_spanning(64_001, 32_000, 100) == 201
    bad = [n for n in range(320, 320 * 3000, 320) if frames_spanning(n, 32_000, 100) != n // 320]
    assert bad == []
