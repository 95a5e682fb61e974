"""Training data: packing AudioSet-style segment lists into HDF5, and the dataset classes.

Data forms and the classes that read them (all map-style, numpy out, no torch needed; PyTorch's
default collate turns the pairs into tensors):

* ``H5Dataset(path)``: a pack from ``python -m training.data pack`` (layout in
  :mod:`training.data.pack`); also reads packs from the original PANNs scripts.
* ``FolderDataset(root, sample_rate=32000, clip_samples=None, labels=None)``:
  ``root/<label>/*.wav`` (any soundfile format), one label per clip, labels = sorted folder names.
* ``CsvDataset(csv_path, sample_rate=32000, clip_samples=None, labels=None)``: header
  ``path,labels``, labels ``;``-separated (multi-label), relative paths resolved against the
  CSV's directory; labels = sorted union of the rows.
* ``open_dataset(path, **options)`` picks one of them: ``.h5``/``.hdf5``, ``.csv``, or a folder.

Every dataset has ``labels: list[str]`` (pack: AudioSet mids; folder/CSV: the names in the data),
``targets``: bool (N, C) multi-hot numpy array (for samplers and metrics; bool keeps the
2M-clip AudioSet table at 1 GB), ``sample_rate``, ``clip_samples``, ``__len__`` and
``__getitem__(i) -> (waveform, target)`` with ``waveform`` float32 (clip_samples,) in [-1, 1]
and ``target`` float32 (C,). ``clip_samples=None`` means
10 s at the sample rate; ``labels=`` fixes the class order (an eval set matching a training set).

All decoding goes through :func:`load_audio` (mono mix, soxr resampling, pad/truncate).
"""

from training.data.audio import (
    AudioDecodeError,
    float_to_int16,
    int16_to_float,
    load_audio,
)
from training.data.datasets import CsvDataset, FolderDataset, H5Dataset, open_dataset
from training.data.pack import PackReport, pack, report_path
from training.data.segments import Segment, SegmentsFormatError, read_segments, write_segments

__all__ = [
    "AudioDecodeError",
    "CsvDataset",
    "FolderDataset",
    "H5Dataset",
    "PackReport",
    "Segment",
    "SegmentsFormatError",
    "float_to_int16",
    "int16_to_float",
    "load_audio",
    "open_dataset",
    "pack",
    "read_segments",
    "report_path",
    "write_segments",
]
