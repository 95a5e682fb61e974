"""Packing AudioSet segment lists into HDF5, and the three dataset forms."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT
from training.audioset import audioset_labels, mid_to_index
from training.data import (
    CsvDataset,
    FolderDataset,
    H5Dataset,
    SegmentsFormatError,
    float_to_int16,
    load_audio,
    open_dataset,
    pack,
    read_segments,
    report_path,
)
from training.synth import make_beep, make_siren, make_tick, make_white_noise

SR = 32000
SIREN, TICK, BEEP, NOISE, SPEECH = "/m/03kmc9", "/m/07qjznt", "/m/02fs_r", "/m/0chx_", "/m/09x0r"


def _write(path: Path, wave: np.ndarray, rate: int, channels: int = 1) -> Path:
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data, rate)
    return path


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    """Four good clips (mixed rates, channels and formats), one corrupt file, one missing id."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    _write(audio / "aaaaaaaaaaa.wav", make_siren(44100, 3.0, rng), 44100, channels=2)
    _write(audio / "bbbbbbbbbbb.flac", make_tick(16000, 12.0, rng), 16000)
    _write(audio / "ccccccccccc.wav", make_beep(SR, 10.0, rng), SR)
    _write(audio / "-dddddddddd.ogg", make_white_noise(22050, 4.0, rng), 22050)
    (audio / "eeeeeeeeeee.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    csv = tmp_path / "segments.csv"
    csv.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=6, num_segs=6, num_unique_labels=5, num_positive_labels=8\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'aaaaaaaaaaa, 30.000, 40.000, "/m/03kmc9,/m/0chx_"\n'
        'bbbbbbbbbbb, 0.000, 10.000, "/m/07qjznt"\n'
        'ccccccccccc, 10.000, 20.000, "/m/02fs_r,/m/zzzzzz"\n'
        '-dddddddddd, 0.000, 10.000, "/m/0chx_,/m/09x0r"\n'
        'eeeeeeeeeee, 0.000, 10.000, "/m/09x0r"\n'
        'fffffffffff, 0.000, 10.000, "/m/09x0r"\n'
    )
    return csv, audio


EXPECTED = {
    "aaaaaaaaaaa": {SIREN, NOISE},
    "bbbbbbbbbbb": {TICK},
    "ccccccccccc": {BEEP},
    "-dddddddddd": {NOISE, SPEECH},
}


def test_read_segments_skips_comments_and_spaces(corpus: tuple[Path, Path]) -> None:
    segments = read_segments(corpus[0])
    assert [s.ytid for s in segments][:2] == ["aaaaaaaaaaa", "bbbbbbbbbbb"]
    assert len(segments) == 6
    assert segments[0].start_seconds == 30.0 and segments[0].end_seconds == 40.0
    assert segments[0].mids == (SIREN, NOISE)


def test_read_segments_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('# c\nabc, 0.0, 10.0, "/m/09x0r"\nabd, zero, 10.0, "/m/09x0r"\n')
    with pytest.raises(SegmentsFormatError, match=r"bad.csv:3"):
        read_segments(bad)


def test_load_audio_mono_resampled_and_fixed_length(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    path = tmp_path / "st.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    wave = load_audio(path, SR, clip_samples=2 * SR)
    assert wave.dtype == np.float32 and wave.shape == (2 * SR,)
    assert np.all(wave[SR + 100 :] == 0)  # padded
    assert abs(np.max(np.abs(wave[:SR])) - 0.25) < 0.01  # mono = mean of the channels
    spectrum = np.abs(np.fft.rfft(wave[:SR]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins: the tone kept its pitch
    assert load_audio(path, SR, clip_samples=1000).shape == (1000,)
    assert load_audio(path, SR).shape == (SR,)


def test_pack_stores_waveforms_targets_and_reports_failures(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    csv, audio = corpus
    out = tmp_path / "train.h5"
    report = pack(csv, audio, out, workers=2, progress=False)
    assert report.newly_packed == 4 and report.packed_total == 4
    assert report.missing == ["fffffffffff"]
    assert [u["ytid"] for u in report.unreadable] == ["eeeeeeeeeee"]
    assert report.unknown_mids == {"/m/zzzzzz": 1}
    saved = json.loads(report_path(out).read_text())
    assert saved["missing"] == ["fffffffffff"] and saved["unreadable"][0]["ytid"] == "eeeeeeeeeee"
    mids = mid_to_index()
    with h5py.File(out, "r") as f:
        assert f["waveform"].dtype == np.int16 and f["waveform"].shape == (4, 10 * SR)
        assert f["target"].shape == (4, 527)
        assert f.attrs["sample_rate"] == SR and f.attrs["clip_samples"] == 10 * SR
        assert [m for m in f.attrs["labels"]] == [label.mid for label in audioset_labels()]
        names = [n.decode() for n in f["audio_name"][:]]
        assert set(names) == set(EXPECTED)
        for row, name in enumerate(names):
            assert set(np.flatnonzero(f["target"][row])) == {mids[m] for m in EXPECTED[name]}
        path = next(audio.glob(f"{names[0]}.*"))
        expected = float_to_int16(load_audio(path, SR, 10 * SR))
        assert np.array_equal(f["waveform"][0], expected)
        assert np.abs(f["waveform"][:].astype(np.int32)).max() <= 32767
        assert np.any(f["waveform"][:] != 0, axis=1).all()


def test_pack_resumes_without_decoding_packed_clips(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    csv, audio = corpus
    out = tmp_path / "train.h5"
    first = pack(csv, audio, out, workers=0, limit=2, progress=False)
    assert first.newly_packed == 2 and first.packed_total == 2
    done = H5Dataset(out).audio_names
    for name in done:  # a re-decode of these would now report them missing
        next(audio.glob(f"{name}.*")).unlink()
    second = pack(csv, audio, out, workers=0, progress=False)
    assert second.already_packed == 2 and second.newly_packed == 2
    assert second.missing == ["fffffffffff"]
    data = H5Dataset(out)
    assert len(data) == 4 and data.audio_names[:2] == done
    assert set(data.audio_names) == set(EXPECTED)


def test_pack_drops_uncommitted_rows_on_resume(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    csv, audio = corpus
    out = tmp_path / "train.h5"
    pack(csv, audio, out, workers=0, limit=1, progress=False)
    with h5py.File(out, "a") as f:  # a crash after writing rows but before committing them
        for name in ("waveform", "target", "audio_name"):
            f[name].resize(3, axis=0)
        f["audio_name"][1:3] = ["junk1", "junk2"]
    assert len(H5Dataset(out)) == 1
    report = pack(csv, audio, out, workers=0, progress=False)
    assert report.already_packed == 1 and report.packed_total == 4
    assert set(H5Dataset(out).audio_names) == set(EXPECTED)


def test_pack_refuses_a_pack_with_other_settings(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    csv, audio = corpus
    out = tmp_path / "train.h5"
    pack(csv, audio, out, workers=0, limit=1, progress=False)
    with pytest.raises(ValueError, match="sample_rate"):
        pack(csv, audio, out, sample_rate=16000, progress=False)


def test_pack_reports_duplicate_ids(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    csv, audio = corpus
    csv.write_text(csv.read_text() + 'bbbbbbbbbbb, 20.000, 30.000, "/m/07qjznt"\n')
    report = pack(csv, audio, tmp_path / "t.h5", workers=0, progress=False)
    assert report.duplicates == ["bbbbbbbbbbb"] and report.packed_total == 4


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_pack_cli_interrupted_then_resumed(tmp_path: Path, signum: int) -> None:
    audio, total = tmp_path / "audio", 200
    audio.mkdir()
    first = _write(
        audio / "clip0000000.flac", make_white_noise(48000, 10.0, np.random.default_rng(1)), 48000
    )
    lines = [f'clip0000000, 0.000, 10.000, "{NOISE}"']
    for i in range(1, total):  # same audio under many ids: cheap to make, slow enough to stop
        os.link(first, audio / f"clip{i:07d}.flac")
        lines.append(f'clip{i:07d}, 0.000, 10.000, "{NOISE}"')
    csv = tmp_path / "seg.csv"
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.h5"
    cmd = [
        sys.executable,
        "-m",
        "training.data",
        "pack",
        "--csv",
        str(csv),
        "--audio-dir",
        str(audio),
        "--out",
        str(out),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stderr is not None
    seen, deadline = b"", time.monotonic() + 120
    while not re.search(rb"\| *[1-9]\d*/%d" % total, seen) and time.monotonic() < deadline:
        chunk = proc.stderr.read1(4096)
        if not chunk:
            break
        seen += chunk
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen + err).decode()[-2000:]
    partial = len(H5Dataset(out))
    assert 1 <= partial < total
    assert json.loads(report_path(out).read_text())["interrupted"] is True
    done = subprocess.run(
        [*cmd, "--no-progress"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert f"{total - partial} packed, {partial} already packed" in done.stdout
    assert len(H5Dataset(out)) == total


def test_pack_cli_success_prints_no_traceback(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    """Decoding processes used to inherit the CLI's SIGTERM handler and print a
    KeyboardInterrupt traceback when the pool stopped them after a successful run."""
    csv, audio = corpus
    for i in range(12):  # more clips than workers, so each worker has taken jobs
        os.link(audio / "ccccccccccc.wav", audio / f"copy{i:07d}.wav")
    with csv.open("a") as fh:
        fh.writelines(f'copy{i:07d}, 0.000, 10.000, "{BEEP}"\n' for i in range(12))
    cmd = [
        sys.executable,
        "-m",
        "training.data",
        "pack",
        "--csv",
        str(csv),
        "--audio-dir",
        str(audio),
        "--out",
        str(tmp_path / "p.h5"),
        "--workers",
        "3",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "16 packed" in done.stdout
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def test_pack_workers_do_not_inherit_the_sigterm_handler() -> None:
    """The CLI turns SIGTERM into KeyboardInterrupt; its forked decoding processes must not
    (stopping them would print their tracebacks). Deterministic, unlike the race above."""
    import importlib
    import multiprocessing

    pack_module = importlib.import_module("training.data.pack")  # the package exports pack()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(1, initializer=pack_module._worker_signals) as pool:
            inherited = pool.apply(signal.getsignal, (signal.SIGTERM,))
            ignored = pool.apply(signal.getsignal, (signal.SIGINT,))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert inherited == signal.SIG_DFL and ignored == signal.SIG_IGN


def test_h5_dataset_items(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    csv, audio = corpus
    out = tmp_path / "train.h5"
    pack(csv, audio, out, workers=0, progress=False)
    data = open_dataset(out)
    assert isinstance(data, H5Dataset) and len(data) == 4
    assert data.labels[0] == "/m/09x0r" and len(data.labels) == 527
    assert data.targets.shape == (4, 527) and data.targets.dtype == bool
    wave, target = data[1]
    assert wave.dtype == np.float32 and wave.shape == (10 * SR,)
    assert np.abs(wave).max() <= 1.0 and target.dtype == np.float32
    assert np.array_equal(target, data.targets[1])
    clone = pickle.loads(pickle.dumps(data))  # DataLoader workers get a copy without the handle
    assert np.array_equal(clone[1][0], wave)
    assert np.array_equal(data[-3][0], wave)
    with pytest.raises(IndexError):
        data[4]
    with pytest.raises(ValueError, match="sample_rate"):
        open_dataset(out, sample_rate=16000)


def _folder_set(root: Path) -> None:
    rng = np.random.default_rng(3)
    for label, maker, count in (("dog bark", make_tick, 2), ("alarm", make_siren, 3)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            _write(root / label / f"{i}.wav", maker(16000, 1.5, rng), 16000)
    (root / "alarm" / "notes.txt").write_text("not audio")
    (root / "empty").mkdir()


def test_folder_dataset_reads_labels_from_folders(tmp_path: Path) -> None:
    _folder_set(tmp_path / "set")
    data = open_dataset(tmp_path / "set", sample_rate=SR, clip_samples=SR)
    assert isinstance(data, FolderDataset)
    assert data.labels == ["alarm", "dog bark"] and len(data) == 5
    assert data.targets.tolist() == [[1, 0]] * 3 + [[0, 1]] * 2
    wave, target = data[4]
    assert wave.shape == (SR,) and wave.dtype == np.float32 and target.tolist() == [0, 1]
    fixed = FolderDataset(tmp_path / "set", labels=["dog bark", "alarm", "cat"])
    assert fixed.targets.shape == (5, 3) and fixed.targets[:2, 0].tolist() == [1, 1]
    assert fixed.clip_samples == 10 * SR
    with pytest.raises(ValueError, match="alarm"):
        FolderDataset(tmp_path / "set", labels=["dog bark"])


def test_csv_dataset_multi_label_relative_paths(tmp_path: Path) -> None:
    _folder_set(tmp_path / "set")
    listing = tmp_path / "set" / "list.csv"
    listing.write_text(
        "path,labels\n"
        "alarm/0.wav,alarm;loud\n"
        f"{tmp_path / 'set' / 'dog bark' / '1.wav'},dog bark\n"
        '"alarm/1.wav"," loud ; alarm "\n'
        "alarm/2.wav,\n"
    )
    data = open_dataset(listing, clip_samples=8000)
    assert isinstance(data, CsvDataset)
    assert data.labels == ["alarm", "dog bark", "loud"]
    assert data.targets.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0]]
    assert data[2][0].shape == (8000,)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,tags\nx.wav,a\n")
    with pytest.raises(ValueError, match="path,labels"):
        CsvDataset(bad)
    with pytest.raises(ValueError, match=r"expected a \.h5"):
        open_dataset(tmp_path / "x.json")
