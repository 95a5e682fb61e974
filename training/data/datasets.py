"""Map-style datasets over the three data forms (see the package docstring)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from training.audioset import audioset_labels
from training.data.audio import AUDIO_EXTENSIONS, int16_to_float, load_audio

DEFAULT_SAMPLE_RATE = 32000
DEFAULT_CLIP_SECONDS = 10.0


class H5Dataset:
    """A pack written by ``python -m training.data pack``; waveforms read on demand.

    The HDF5 handle opens lazily in the process that reads, so the dataset can be handed to
    DataLoader worker processes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: pack not found")
        with h5py.File(self.path, "r") as f:
            missing = {"waveform", "target", "audio_name"} - set(f)
            if missing:
                raise ValueError(f"{self.path}: not a pack (no {', '.join(sorted(missing))})")
            count = int(f.attrs.get("packed", f["waveform"].shape[0]))
            # Packs from the original PANNs scripts carry no attrs: AudioSet at 32 kHz.
            self.sample_rate = int(f.attrs.get("sample_rate", DEFAULT_SAMPLE_RATE))
            self.clip_samples = int(f.attrs.get("clip_samples", f["waveform"].shape[1]))
            self.labels: list[str] = [_text(x) for x in f.attrs.get("labels", _audioset_mids())]
            self.targets: np.ndarray = f["target"][:count].astype(bool)
            self.audio_names: list[str] = [_text(x) for x in f["audio_name"][:count]]
        if self.targets.shape[1] != len(self.labels):
            raise ValueError(
                f"{self.path}: {self.targets.shape[1]} target columns but {len(self.labels)} labels"
            )
        self._file: h5py.File | None = None
        self._waveform: h5py.Dataset | None = None  # looked up once per open, not per clip
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        if self._waveform is None or self._pid != os.getpid():  # forked workers open their own
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            self._waveform = self._file["waveform"]
        row = int(index) % len(self)
        wave = int16_to_float(self._waveform[row])
        return wave, self.targets[row].astype(np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._waveform = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = state["_waveform"] = None  # each process opens its own handle
        return state


class _FileListDataset:
    """Shared part of the folder and CSV forms: a list of files with multi-hot targets."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[str],
        targets: np.ndarray,
        sample_rate: int,
        clip_samples: int | None,
    ) -> None:
        self.files = list(files)
        self.labels = list(labels)
        self.targets = targets
        self.sample_rate = sample_rate
        self.clip_samples = (
            round(sample_rate * DEFAULT_CLIP_SECONDS) if clip_samples is None else clip_samples
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        wave = load_audio(self.files[index], self.sample_rate, self.clip_samples)
        return wave, self.targets[index].astype(np.float32)


class FolderDataset(_FileListDataset):
    """``root/<label>/<clip>.wav``: one label per clip, labels = the sub-folder names, sorted.

    Pass ``labels`` to fix the class order (e.g. an eval set using the training set's order);
    folders not in it are an error, labels without a folder simply have no clips.
    """

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        clip_samples: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: dataset folder not found")
        by_label = {d.name: _audio_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
        by_label = {name: files for name, files in by_label.items() if files}
        if not by_label:
            raise ValueError(f"{root}: no <label>/<clip> audio files found")
        order = list(labels) if labels is not None else sorted(by_label)
        unknown = sorted(set(by_label) - set(order))
        if unknown:
            raise ValueError(f"{root}: folders {unknown} are not among the given labels")
        files = [f for name in order for f in by_label.get(name, [])]
        targets = np.zeros((len(files), len(order)), dtype=bool)
        row = 0
        for col, name in enumerate(order):
            count = len(by_label.get(name, []))
            targets[row : row + count, col] = True
            row += count
        super().__init__(files, order, targets, sample_rate, clip_samples)


class CsvDataset(_FileListDataset):
    """A CSV with header ``path,labels``; labels separated by ``;``; paths relative to the CSV.

    Labels = the sorted union over all rows unless ``labels`` fixes the order (then a row
    naming a label outside it is an error). A row with no labels is a clip with no class.
    """

    def __init__(
        self,
        csv_path: str | Path,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        clip_samples: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        csv_path = Path(csv_path)
        rows = _read_label_csv(csv_path)
        order = list(labels) if labels is not None else sorted({t for _, ts in rows for t in ts})
        column = {name: i for i, name in enumerate(order)}
        targets = np.zeros((len(rows), len(order)), dtype=bool)
        for row, (path, tags) in enumerate(rows):
            for tag in tags:
                if tag not in column:
                    raise ValueError(f"{csv_path}: {path}: label {tag!r} not in the label set")
                targets[row, column[tag]] = True
        files = [p if p.is_absolute() else csv_path.parent / p for p, _ in rows]
        super().__init__(files, order, targets, sample_rate, clip_samples)


def _read_label_csv(csv_path: Path) -> list[tuple[Path, list[str]]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: label CSV not found")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path}: expected a header with columns 'path,labels'")
        rows = [
            (Path(r["path"].strip()), [t.strip() for t in (r["labels"] or "").split(";")])
            for r in reader
            if r["path"] and r["path"].strip()
        ]
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    return [(path, [t for t in tags if t]) for path, tags in rows]


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def _audioset_mids() -> list[str]:
    return [label.mid for label in audioset_labels()]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_dataset(path: str | Path, **kwargs: Any) -> H5Dataset | FolderDataset | CsvDataset:
    """The dataset for ``path``: ``.h5``/``.hdf5`` pack, ``.csv`` label list, or label folders.

    ``kwargs`` (sample_rate, clip_samples, labels) go to the folder and CSV forms; a pack
    carries its own, and a value given here that differs from the pack's is an error.
    """
    path = Path(path)
    if path.is_dir():
        return FolderDataset(path, **kwargs)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        pack = H5Dataset(path)
        _check_pack_options(pack, kwargs)
        return pack
    if suffix == ".csv":
        return CsvDataset(path, **kwargs)
    raise ValueError(f"{path}: expected a .h5 pack, a .csv label list or a folder of label folders")


def _check_pack_options(pack: H5Dataset, options: dict[str, Any]) -> None:
    actual = {
        "sample_rate": pack.sample_rate,
        "clip_samples": pack.clip_samples,
        "labels": pack.labels,
    }
    for key, value in options.items():
        if key not in actual:
            raise TypeError(f"open_dataset() got an unexpected option {key!r}")
        if value is not None and (list(value) if key == "labels" else value) != actual[key]:
            raise ValueError(f"{pack.path}: pack has a different {key} than requested")
