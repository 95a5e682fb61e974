"""``python -m training.data pack|info``: build an HDF5 pack, or describe one."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import numpy as np

from training.audioset import audioset_labels
from training.data.datasets import H5Dataset
from training.data.pack import pack, report_path
from training.data.segments import SegmentsFormatError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="decode an AudioSet segment list + audio dir into HDF5")
    p.add_argument("--csv", required=True, help='segment list: YTID, start, end, "mids"')
    p.add_argument("--audio-dir", required=True, help="audio files named <YTID>.<ext>")
    p.add_argument("--out", required=True, help="the .h5 pack (resumed when it exists)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding processes (0: decode in this process)",
    )
    p.add_argument(
        "--sample-rate", type=int, default=32000, help="resample clips to this rate (Hz)"
    )
    p.add_argument(
        "--clip-seconds",
        type=float,
        default=10.0,
        help="zero-pad or cut every clip to this length",
    )
    p.add_argument(
        "--seek-segments",
        action="store_true",
        help="files hold whole recordings: read from each row's start_seconds",
    )
    p.add_argument("--limit", type=int, default=None, help="stop after this many new clips")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="summarise a pack: clips, rate, most frequent labels")
    i.add_argument("pack", help="the .h5 pack")
    i.add_argument("--top", type=int, default=10, help="how many labels to list")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _pack(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops as cleanly as Ctrl-C
    try:
        report = pack(
            args.csv,
            args.audio_dir,
            args.out,
            workers=args.workers,
            sample_rate=args.sample_rate,
            clip_seconds=args.clip_seconds,
            seek_segments=args.seek_segments,
            limit=args.limit,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"interrupted; committed clips kept in {args.out}, re-run to resume", file=sys.stderr)
        return 130
    except (OSError, ValueError, SegmentsFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    for kind, ids in (
        ("missing", report.missing),
        ("unreadable", [u["ytid"] for u in report.unreadable]),
    ):
        if ids:
            more = f" (+{len(ids) - 5} more)" if len(ids) > 5 else ""
            print(f"{kind}: {', '.join(ids[:5])}{more}")
    print(f"report: {report_path(args.out)}")
    return 0 if report.packed_total > 0 else 1


def _info(args: argparse.Namespace) -> int:
    data = H5Dataset(args.pack)
    names = {label.mid: label.display_name for label in audioset_labels()}
    counts = data.targets.sum(axis=0)
    print(
        f"{data.path}: {len(data)} clips, {data.sample_rate} Hz, "
        f"{data.clip_samples / data.sample_rate:g} s, {len(data.labels)} classes, "
        f"{int((counts > 0).sum())} with clips"
    )
    for col in np.argsort(-counts, kind="stable")[: args.top]:
        if counts[col] > 0:
            mid = data.labels[col]
            print(f"  {int(counts[col]):8d}  {mid:12s} {names.get(mid, '')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return _pack(args) if args.command == "pack" else _info(args)


if __name__ == "__main__":
    sys.exit(main())
