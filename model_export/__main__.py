"""``python -m model_export``: a checkpoint -> a verified ONNX model bundle.

    python -m model_export --checkpoint PATH [--arch NAME] --out DIR [--fp16] [--int8]
    python -m model_export --official Cnn14 --out DIR [--fp16] [--int8] [--calibration-dir DIR]

Exits 1 with the numbers when a graph fails its parity check, or with the reason when the
checkpoint cannot be found, downloaded or loaded; nothing is written in either case.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model_export.checkpoint import (
    CHECKPOINT_DIR_ENV,
    DEFAULT_CHECKPOINT_DIR,
    checkpoint_dir,
    describe,
    export_checkpoint,
)
from model_export.graph import ExportError

log = logging.getLogger("model_export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="a .pth checkpoint file")
    what.add_argument(
        "--official",
        metavar="NAME",
        help="an official checkpoint (e.g. Cnn14), downloaded and verified",
    )
    parser.add_argument("--arch", help="architecture (default: from the checkpoint)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--name", help="model name in the card (default: the --out dir name)")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (GPU)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (CPU)")
    parser.add_argument(
        "--calibration-dir", type=Path, help="real recordings to calibrate and check int8 on"
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help=f"where --official files live (default ${CHECKPOINT_DIR_ENV} "
        f"or {DEFAULT_CHECKPOINT_DIR})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from training.cli import run

    return run(lambda: _export(args), ExportError)


def _export(args: argparse.Namespace) -> int:
    from training.checkpoints import download, get_official

    path, digest = args.checkpoint, None
    if args.official:
        path = download(
            args.official, args.checkpoint_dir or checkpoint_dir(), progress=not args.quiet
        )
        digest = get_official(args.official).sha256  # download() verified it
    card = export_checkpoint(
        path,
        args.out,
        arch=args.arch,
        name=args.name,
        fp16=args.fp16,
        int8=args.int8,
        calibration_dir=args.calibration_dir,
        progress=not args.quiet,
        sha256=digest,
    )
    print(describe(card, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
