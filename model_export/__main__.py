"""``python -m model_export``: a checkpoint -> a verified ONNX model bundle.

    python -m model_export --checkpoint PATH [--arch NAME] --out DIR [--fp16] [--int8]
    python -m model_export --official Cnn14 --out DIR [--fp16] [--int8] [--calibration-dir DIR]

Exits 1 with the numbers when a graph fails its parity check, or with the reason when the
checkpoint cannot be found, downloaded or loaded; nothing is written in either case.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from model_export.bundle import export_bundle
from model_export.card import custom_labels
from model_export.graph import ExportError
from service.core.card import ModelCard, Source

log = logging.getLogger("model_export")

CHECKPOINT_DIR_ENV = "PANNS_CHECKPOINT_DIR"
DEFAULT_CHECKPOINT_DIR = Path("models/checkpoints")


def checkpoint_dir() -> Path:
    """Where official checkpoints are downloaded to and looked for."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV) or DEFAULT_CHECKPOINT_DIR)


def export_checkpoint(
    path: Path,
    out: Path,
    *,
    arch: str | None = None,
    name: str | None = None,
    fp16: bool = False,
    int8: bool = False,
    calibration_dir: Path | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> ModelCard:
    """Load ``path`` (official or our own training's) and export it to the bundle ``out``.

    ``sha256``: the file's digest when the caller already knows it (a verified official
    download), so a checkpoint of hundreds of MB is not hashed again.
    """
    from training.checkpoints import read_checkpoint, sha256_file
    from training.checkpoints.loading import model_from_checkpoint, resolve_arch

    raw = read_checkpoint(path)
    arch_name = resolve_arch(path, raw, arch)
    names = raw.get("labels")
    labels = custom_labels([str(n) for n in names]) if isinstance(names, list) else None
    model = model_from_checkpoint(path, raw, arch=arch_name)
    del raw
    digest = sha256 or sha256_file(path, progress=progress)
    source = Source(checkpoint=path.name, sha256=digest)
    return export_bundle(
        model,
        out,
        arch=arch_name,
        name=name,
        labels=labels,
        source=source,
        fp16=fp16,
        int8=int8,
        calibration_dir=calibration_dir,
        progress=progress,
    )


def describe(card: ModelCard, out: Path) -> str:
    """A short human summary of a written bundle."""
    lines = [
        f"bundle {out}: {card.name} ({card.arch}, {card.sample_rate} Hz, {len(card.labels)} labels)"
    ]
    for variant, entry in card.files.items():
        parity = card.parity.get(variant)
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in parity.max_abs_diff.items()) if parity else ""
        extra = ""
        if parity is not None and parity.top10_agreement is not None:
            extra = f", top-10 agreement {parity.top10_agreement:.3f}"
        lines.append(
            f"  {variant:5s} {entry.path:18s} {entry.bytes / 1e6:8.1f} MB  "
            f"max abs diff vs PyTorch: {diffs}{extra}"
        )
    return "\n".join(lines)


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
