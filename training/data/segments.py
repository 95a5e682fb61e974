"""The AudioSet segment-list CSV format.

One clip per line: ``YTID, start_seconds, end_seconds, "mid1,mid2,..."``. Lines starting with
``#`` are comments (the published files carry three header comments). Spaces after the commas are
allowed, as in the published files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Segment:
    ytid: str
    start_seconds: float
    end_seconds: float
    mids: tuple[str, ...]


class SegmentsFormatError(ValueError):
    """A segment list that does not follow the AudioSet format."""


def read_segments(path: str | Path) -> list[Segment]:
    """Parse a segment CSV; raises SegmentsFormatError naming the file and line on bad rows."""
    path = Path(path)
    segments = []
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            segments.append(_parse_line(line, f"{path}:{lineno}"))
    return segments


def _parse_line(line: str, where: str) -> Segment:
    fields = next(csv.reader([line], skipinitialspace=True))
    if len(fields) != 4:
        raise SegmentsFormatError(
            f"{where}: expected 4 fields (YTID, start_seconds, end_seconds, positive_labels), "
            f"got {len(fields)}"
        )
    ytid, start, end, labels = (f.strip() for f in fields)
    if not ytid:
        raise SegmentsFormatError(f"{where}: empty YTID")
    try:
        start_s, end_s = float(start), float(end)
    except ValueError as exc:
        raise SegmentsFormatError(f"{where}: start/end seconds are not numbers: {exc}") from exc
    if end_s < start_s:
        raise SegmentsFormatError(f"{where}: end_seconds {end_s} is before start {start_s}")
    mids = tuple(m.strip() for m in labels.split(",") if m.strip())
    return Segment(ytid, start_s, end_s, mids)


def write_segments(
    path: str | Path, segments: Sequence[Segment], comments: Iterable[str] = ()
) -> None:
    """Write segments in the published layout: header comments, then one quoted label list a row."""
    lines = [f"# {c}" for c in comments]
    lines.append("# YTID, start_seconds, end_seconds, positive_labels")
    for seg in segments:
        lines.append(
            f'{seg.ytid}, {seg.start_seconds:.3f}, {seg.end_seconds:.3f}, "{",".join(seg.mids)}"'
        )
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
