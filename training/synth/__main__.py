"""``python -m training.synth --out DIR --clips N``: write a synthetic sound-event data set."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence

from training.synth.build import synth_audioset, synth_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--clip-seconds", type=float, default=10.0, help="clip length (default: 10)"
    )
    parser.add_argument(
        "--sample-rate", type=int, default=32000, help="sample rate in Hz (default: 32000)"
    )
    parser.add_argument(
        "--layout",
        choices=("audioset", "folder"),
        default="audioset",
        help="audioset: multi-label clips + segments.csv; folder: <label>/ dirs",
    )
    speech = parser.add_mutually_exclusive_group()
    speech.add_argument(
        "--speech",
        dest="speech",
        action="store_true",
        default=None,
        help="include Speech (needs espeak-ng; default: when it is installed)",
    )
    speech.add_argument("--no-speech", dest="speech", action="store_false", help="leave Speech out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.clips <= 0 or args.clip_seconds <= 0 or args.sample_rate <= 0:
        print("error: --clips, --clip-seconds and --sample-rate must be positive", file=sys.stderr)
        return 2
    make = synth_audioset if args.layout == "audioset" else synth_folder
    try:
        clips = make(
            args.out,
            args.clips,
            seed=args.seed,
            sample_rate=args.sample_rate,
            clip_seconds=args.clip_seconds,
            speech=args.speech,
            progress=not args.no_progress,
        )
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = Counter(c.name for clip in clips for c in clip.classes)
    print(f"wrote {len(clips)} clips ({args.layout} layout) to {args.out}")
    for name, count in sorted(counts.items()):
        print(f"  {count:6d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
