"""Pack an AudioSet-style segment list and its audio files into one HDF5 file.

Layout of the pack (what :class:`training.data.H5Dataset` reads):

* ``waveform``   (N, clip_samples) int16, mono at ``sample_rate``, one chunk per clip;
* ``target``     (N, C) bool multi-hot, columns in the order of ``attrs["labels"]``;
* ``audio_name`` (N,) utf-8 clip ids (the YTIDs);
* attrs: ``sample_rate``, ``clip_samples``, ``labels`` (the 527 AudioSet mids),
  ``packed`` (rows committed so far), ``format_version``.

Rows are appended in batches and ``packed`` is updated after each batch is written, so an
interrupted run leaves a consistent prefix; re-running skips clip ids already packed (and
drops any uncommitted tail). Missing or undecodable files and unknown label mids are listed in
``<out>.report.json`` and in the summary line.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import signal
from collections import Counter
from collections.abc import Generator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from training.audioset import audioset_labels, mid_to_index
from training.data.audio import AudioDecodeError, float_to_int16, index_audio_dir, load_audio
from training.data.segments import Segment, read_segments

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WRITE_BATCH = 32


@dataclass(frozen=True)
class _Job:
    ytid: str
    path: str
    offset_seconds: float
    target: tuple[int, ...]  # class indices


@dataclass
class PackReport:
    """What one run of :func:`pack` did; written as JSON beside the pack."""

    csv: str
    audio_dir: str
    out: str
    rows: int = 0  # segments in the CSV
    packed_total: int = 0  # rows in the pack after this run
    newly_packed: int = 0
    already_packed: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unknown_mids: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    def summary(self) -> str:
        state = "interrupted (re-run to resume)" if self.interrupted else "done"
        return (
            f"pack {state}: {self.newly_packed} packed, {self.already_packed} already packed, "
            f"{len(self.missing)} missing, {len(self.unreadable)} unreadable, "
            f"{len(self.duplicates)} duplicate ids, {len(self.unknown_mids)} unknown mids; "
            f"{self.packed_total} clips in {self.out}"
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def pack(
    csv_path: str | Path,
    audio_dir: str | Path,
    out: str | Path,
    *,
    workers: int = 0,
    sample_rate: int = 32000,
    clip_seconds: float = 10.0,
    seek_segments: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> PackReport:
    """Decode the clips of ``csv_path`` found in ``audio_dir`` into the pack ``out``.

    ``workers`` > 0 decodes in that many processes (0: in this process). ``seek_segments``
    reads from each row's start_seconds (for files holding whole recordings; by default files
    are taken to hold just the segment). ``limit`` stops after that many new clips.
    On KeyboardInterrupt the committed rows and the report are kept, then the interrupt is
    re-raised.
    """
    audio_dir, out = Path(audio_dir), Path(out)
    if not audio_dir.is_dir():
        raise NotADirectoryError(f"{audio_dir}: audio directory not found")
    clip_samples = round(sample_rate * clip_seconds)
    report = PackReport(csv=str(csv_path), audio_dir=str(audio_dir), out=str(out))
    segments = read_segments(csv_path)
    report.rows = len(segments)
    with _PackWriter(out, sample_rate, clip_samples) as writer:
        jobs = _plan(segments, index_audio_dir(audio_dir), writer.names, seek_segments, report)
        if limit is not None:
            jobs = jobs[:limit]
        try:
            _run(jobs, writer, report, workers, sample_rate, clip_samples, progress)
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            writer.commit()
            report.packed_total = writer.count
            report.write(report_path(out))
            log.debug("%s", report.summary())
    return report


def _plan(
    segments: list[Segment],
    files: dict[str, Path],
    packed: set[str],
    seek_segments: bool,
    report: PackReport,
) -> list[_Job]:
    """Decide per segment: already packed, duplicate, missing, or a decode job."""
    lookup = mid_to_index()
    unknown: Counter[str] = Counter()
    seen: set[str] = set()
    jobs = []
    for seg in segments:
        unknown.update(m for m in seg.mids if m not in lookup)
        if seg.ytid in seen:
            report.duplicates.append(seg.ytid)
            continue
        seen.add(seg.ytid)
        if seg.ytid in packed:
            report.already_packed += 1
            continue
        path = files.get(seg.ytid) or files.get("Y" + seg.ytid)  # official downloads add "Y"
        if path is None:
            report.missing.append(seg.ytid)
            continue
        target = tuple(sorted({lookup[m] for m in seg.mids if m in lookup}))
        offset = seg.start_seconds if seek_segments else 0.0
        jobs.append(_Job(seg.ytid, str(path), offset, target))
    report.unknown_mids = dict(unknown.most_common())
    return jobs


def _run(
    jobs: list[_Job],
    writer: _PackWriter,
    report: PackReport,
    workers: int,
    sample_rate: int,
    clip_samples: int,
    progress: bool,
) -> None:
    bar = tqdm(total=len(jobs), unit="clip", desc="pack", disable=not progress)
    with bar, closing(_decoded(jobs, workers, sample_rate, clip_samples)) as results:
        for job, wave, error in results:
            if wave is None:
                report.unreadable.append({"ytid": job.ytid, "path": job.path, "error": error})
                bar.set_postfix(unreadable=len(report.unreadable), refresh=False)
            else:
                writer.append(job.ytid, wave, job.target)
                report.newly_packed += 1
            bar.update()


def _decoded(
    jobs: list[_Job], workers: int, sample_rate: int, clip_samples: int
) -> Generator[tuple[_Job, np.ndarray | None, str], None, None]:
    args = [(job, sample_rate, clip_samples) for job in jobs]
    if workers <= 0 or len(jobs) <= 1:
        yield from map(_decode_job, args)
        return
    pool = multiprocessing.Pool(workers, initializer=_worker_signals)
    finished = False
    try:
        yield from pool.imap(_decode_job, args, chunksize=4)
        finished = True
    finally:
        if finished:  # every job is done: let the workers exit by themselves
            pool.close()
        else:  # interrupted or failed: stop them now
            pool.terminate()
        pool.join()


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the parent, which commits what it has and stops them, and
    die quietly on the parent's SIGTERM (``pool.terminate()``): a forked worker would
    otherwise inherit a handler the parent installed and print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decode_job(
    args: tuple[_Job, int, int],
) -> tuple[_Job, np.ndarray | None, str]:
    job, sample_rate, clip_samples = args
    try:
        wave = load_audio(job.path, sample_rate, clip_samples, job.offset_seconds)
    except (AudioDecodeError, OSError) as exc:
        return job, None, str(exc)
    return job, float_to_int16(wave), ""


class _PackWriter:
    """Appends rows to the pack in batches; ``attrs["packed"]`` marks the committed prefix."""

    def __init__(self, out: Path, sample_rate: int, clip_samples: int) -> None:
        self.classes = len(audioset_labels())
        out.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(out, "a")
        try:
            if "waveform" not in self.file:
                self._create(sample_rate, clip_samples)
            self._check(out, sample_rate, clip_samples)
        except (ValueError, KeyError):
            self.file.close()
            raise
        self.count = int(self.file.attrs["packed"])
        self._resize(self.count)  # drop rows written but never committed
        self.names = {n.decode() for n in self.file["audio_name"][: self.count]}
        self.pending: list[tuple[str, np.ndarray, tuple[int, ...]]] = []

    def __enter__(self) -> _PackWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def _create(self, sample_rate: int, clip_samples: int) -> None:
        f = self.file
        f.create_dataset(
            "waveform",
            (0, clip_samples),
            np.int16,
            maxshape=(None, clip_samples),
            chunks=(1, clip_samples),
        )
        f.create_dataset(
            "target",
            (0, self.classes),
            bool,
            maxshape=(None, self.classes),
            chunks=(1024, self.classes),
        )
        f.create_dataset(
            "audio_name", (0,), h5py.string_dtype("utf-8"), maxshape=(None,), chunks=(1024,)
        )
        f.attrs.update(
            sample_rate=sample_rate,
            clip_samples=clip_samples,
            packed=0,
            format_version=FORMAT_VERSION,
            labels=[label.mid for label in audioset_labels()],
        )

    def _check(self, out: Path, sample_rate: int, clip_samples: int) -> None:
        attrs = self.file.attrs
        if "packed" not in attrs or "labels" not in attrs:
            raise ValueError(f"{out}: an HDF5 file that is not a pack written by this tool")
        if (int(attrs["sample_rate"]), int(attrs["clip_samples"])) != (sample_rate, clip_samples):
            raise ValueError(
                f"{out}: existing pack has sample_rate={attrs['sample_rate']}, clip_samples="
                f"{attrs['clip_samples']}; this run asks for {sample_rate}, {clip_samples}"
            )

    def append(self, name: str, wave: np.ndarray, target: tuple[int, ...]) -> None:
        self.pending.append((name, wave, target))
        self.names.add(name)
        if len(self.pending) >= WRITE_BATCH:
            self.commit()

    def commit(self) -> None:
        if not self.pending:
            return
        start, stop = self.count, self.count + len(self.pending)
        self._resize(stop)
        targets = np.zeros((len(self.pending), self.classes), dtype=bool)
        for row, (_, _, classes) in enumerate(self.pending):
            targets[row, list(classes)] = True
        self.file["waveform"][start:stop] = np.stack([w for _, w, _ in self.pending])
        self.file["target"][start:stop] = targets
        self.file["audio_name"][start:stop] = [n for n, _, _ in self.pending]
        self.file.flush()
        self.file.attrs["packed"] = self.count = stop
        self.file.flush()
        self.pending.clear()

    def _resize(self, rows: int) -> None:
        for name in ("waveform", "target", "audio_name"):
            self.file[name].resize(rows, axis=0)
