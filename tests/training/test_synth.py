"""The synthetic sound-event set: generators, determinism, AudioSet format, packing."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT
from training.audioset import audioset_labels, mid_to_index
from training.data import CsvDataset, FolderDataset, H5Dataset, pack, read_segments
from training.synth import (
    CLASSES,
    SILENCE,
    available_classes,
    espeak_available,
    make_beep,
    make_mains_hum,
    make_pink_noise,
    make_silence,
    make_sine_wave,
    make_siren,
    make_speech,
    make_tick,
    make_white_noise,
    synth_audioset,
    synth_folder,
)

SR = 16000
GENERATORS = [
    make_sine_wave,
    make_beep,
    make_siren,
    make_mains_hum,
    make_tick,
    make_white_noise,
    make_pink_noise,
]


def _peak_freqs(wave: np.ndarray, sr: int, frame: float = 0.05) -> np.ndarray:
    """Frequency of the strongest bin per frame (frames with energy only)."""
    n = int(frame * sr)
    frames = wave[: len(wave) // n * n].reshape(-1, n)
    frames = frames[np.sqrt((frames**2).mean(axis=1)) > 0.05]
    spectra = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1))
    return np.argmax(spectra, axis=1) * sr / n


def _band_power(wave: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / sr)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum())


def test_classes_are_audioset_labels() -> None:
    table = {label.mid: label.display_name for label in audioset_labels()}
    assert len(CLASSES) >= 8
    assert len({c.mid for c in CLASSES}) == len(CLASSES)
    for cls in CLASSES:
        assert table[cls.mid] == cls.name
    assert {c.name for c in CLASSES} >= {
        "Siren",
        "Sine wave",
        "White noise",
        "Pink noise",
        "Beep, bleep",
        "Tick",
        "Mains hum",
        "Silence",
    }


@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_generators_length_level_and_seed(make) -> None:  # type: ignore[no-untyped-def]
    wave = make(SR, 2.5, np.random.default_rng(5))
    assert wave.dtype == np.float32 and wave.shape == (40000,)
    assert np.all(np.isfinite(wave)) and abs(np.abs(wave).max() - 0.5) < 1e-3
    assert np.array_equal(wave, make(SR, 2.5, np.random.default_rng(5)))
    assert not np.array_equal(wave, make(SR, 2.5, np.random.default_rng(6)))
    with pytest.raises(ValueError):
        make(SR, 0.0, np.random.default_rng(5))


def test_generators_have_their_intended_spectra() -> None:
    rng = np.random.default_rng(7)
    sine = _peak_freqs(make_sine_wave(SR, 2.0, rng), SR)
    assert sine.min() >= 140 and sine.max() <= 920 and np.ptp(sine) <= 20
    beep = make_beep(SR, 3.0, rng)
    assert 1450 <= np.median(_peak_freqs(beep, SR)) <= 4100
    envelope = np.abs(beep).reshape(-1, 160).max(axis=1)  # 10 ms frames
    assert (envelope < 0.01).mean() > 0.1 and (envelope > 0.3).mean() > 0.1  # on and off
    siren = _peak_freqs(make_siren(SR, 4.0, rng), SR)
    assert siren.max() / siren.min() > 1.3  # it sweeps
    hum = make_mains_hum(SR, 2.0, rng)
    assert _band_power(hum, SR, 40, 1100) > 0.99 * _band_power(hum, SR, 0, SR / 2)
    assert round(_peak_freqs(hum, SR, frame=1.0)[0]) in (50, 60, 100, 120)
    pink, white = make_pink_noise(SR, 4.0, rng), make_white_noise(SR, 4.0, rng)
    pink_ratio = _band_power(pink, SR, 100, 200) / _band_power(pink, SR, 3200, 6400)
    white_ratio = _band_power(white, SR, 100, 200) / _band_power(white, SR, 3200, 6400)
    assert 0.7 < pink_ratio < 1.4 and white_ratio < 0.05  # equal power per octave vs per Hz
    tick = make_tick(SR, 2.0, rng)
    assert (np.abs(tick) < 0.01).mean() > 0.8  # sparse transients
    assert not make_silence(SR, 1.0, rng).any()


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_speech_through_espeak() -> None:
    wave = make_speech(SR, 3.0, np.random.default_rng(0))
    assert wave.shape == (48000,) and np.abs(wave).max() > 0.4


def test_speech_class_only_with_espeak() -> None:
    if espeak_available():
        assert "Speech" in [c.name for c in available_classes()]
    else:
        assert available_classes() == CLASSES
        with pytest.raises(RuntimeError, match="espeak-ng"):
            available_classes(speech=True)


def test_synth_audioset_format_and_determinism(tmp_path: Path) -> None:
    a = synth_audioset(
        tmp_path / "a", 24, seed=3, sample_rate=SR, clip_seconds=3.0, speech=False, progress=False
    )
    b = synth_audioset(
        tmp_path / "b", 24, seed=3, sample_rate=SR, clip_seconds=3.0, speech=False, progress=False
    )
    c = synth_audioset(
        tmp_path / "c", 24, seed=4, sample_rate=SR, clip_seconds=3.0, speech=False, progress=False
    )
    assert (tmp_path / "a/segments.csv").read_text() == (tmp_path / "b/segments.csv").read_text()
    assert all(x.path.read_bytes() == y.path.read_bytes() for x, y in zip(a, b, strict=True))
    assert {x.clip_id for x in a}.isdisjoint({x.clip_id for x in c})
    segments = read_segments(tmp_path / "a/segments.csv")
    known = mid_to_index()
    assert [s.ytid for s in segments] == [x.clip_id for x in a]
    for seg in segments:
        assert len(seg.ytid) == 11 and seg.end_seconds == 3.0
        assert all(m in known for m in seg.mids) and 1 <= len(seg.mids) <= 3
        assert SILENCE.mid not in seg.mids or seg.mids == (SILENCE.mid,)
        info = sf.info(str(tmp_path / "a/audio" / f"{seg.ytid}.wav"))
        assert info.samplerate == SR and info.frames == 3 * SR and info.channels == 1
    assert len({m for s in segments for m in s.mids}) >= 6
    with (tmp_path / "a/labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["labels"].split(";") == [k.name for k in a[0].classes]
    listed = CsvDataset(tmp_path / "a/labels.csv", sample_rate=SR, clip_samples=3 * SR)
    assert set(listed.labels) <= {k.name for k in CLASSES} and len(listed) == 24


def test_synth_cli_output_goes_through_pack(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.synth",
            "--out",
            str(out),
            "--clips",
            "12",
            "--seed",
            "1",
            "--clip-seconds",
            "2",
            "--no-speech",
            "--no-progress",
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = pack(
        out / "segments.csv",
        out / "audio",
        tmp_path / "syn.h5",
        workers=0,
        clip_seconds=2.0,
        progress=False,
    )
    assert report.packed_total == 12 and not report.missing and not report.unreadable
    assert report.unknown_mids == {}
    data = H5Dataset(tmp_path / "syn.h5")
    index = mid_to_index()
    by_id = {s.ytid: s.mids for s in read_segments(out / "segments.csv")}
    for row, name in enumerate(data.audio_names):
        assert set(np.flatnonzero(data.targets[row])) == {index[m] for m in by_id[name]}
        silent = by_id[name] == (SILENCE.mid,)
        assert (np.abs(data[row][0]).max() == 0) == silent


def test_synth_folder_layout(tmp_path: Path) -> None:
    clips = synth_folder(
        tmp_path / "f", 16, seed=0, sample_rate=SR, clip_seconds=1.0, speech=False, progress=False
    )
    assert all(len(c.classes) == 1 for c in clips)
    data = FolderDataset(tmp_path / "f", sample_rate=SR, clip_samples=SR)
    assert data.labels == sorted(c.name for c in CLASSES)
    assert data.targets.sum(axis=0).tolist() == [2.0] * len(CLASSES)
    siren = data.labels.index("Siren")
    row = int(np.flatnonzero(data.targets[:, siren])[0])
    assert np.abs(data[row][0]).max() > 0.1
