"""The 527 AudioSet classes in PANNs output order (``index, mid, display_name``)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LABELS_CSV = Path(__file__).with_name("audioset_labels.csv")
NUM_CLASSES = 527


@dataclass(frozen=True)
class AudioSetLabel:
    index: int
    mid: str  # AudioSet machine id, e.g. "/m/09x0r"
    display_name: str


@cache
def audioset_labels() -> tuple[AudioSetLabel, ...]:
    """The label table shipped with the package (AudioSet ontology, CC BY 4.0)."""
    with LABELS_CSV.open(newline="", encoding="utf-8") as fh:
        rows = [
            AudioSetLabel(int(r["index"]), r["mid"], r["display_name"]) for r in csv.DictReader(fh)
        ]
    if len(rows) != NUM_CLASSES or [r.index for r in rows] != list(range(NUM_CLASSES)):
        raise RuntimeError(f"{LABELS_CSV}: expected {NUM_CLASSES} rows indexed 0..526")
    return tuple(rows)


@cache
def mid_to_index() -> dict[str, int]:
    return {label.mid: label.index for label in audioset_labels()}


@cache
def name_to_index() -> dict[str, int]:
    return {label.display_name: label.index for label in audioset_labels()}


def display_names(labels: Sequence[str]) -> list[str]:
    """``labels`` with AudioSet mids (as packs name their columns) replaced by display names;
    other names are kept."""
    names = {label.mid: label.display_name for label in audioset_labels()}
    return [names.get(label, label) for label in labels]
