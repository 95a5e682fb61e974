"""``python -m training.checkpoints {list,download}``: the official checkpoints from the shell."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.checkpoints.download import DEFAULT_DIR, DEFAULT_TIMEOUT, download, verify
from training.checkpoints.registry import BASE_URL_ENV, OFFICIAL, CheckpointError
from training.models import default_args


def _status(path: Path, size: int, verified: str | None) -> str:
    part = path.with_name(path.name + ".part")
    if path.is_file():
        return "verified" if verified is None else f"BAD: {verified}"
    if part.is_file():
        return f"partial ({100 * part.stat().st_size / size:.0f}%)"
    return "missing"


def cmd_list(directory: Path) -> int:
    """Print the table of official checkpoints and their state in ``directory``."""
    header = f"{'arch':<24} {'file':<38} {'mAP':>5} {'size MB':>8} {'rate':>6}  in {directory}"
    print(header)
    print("-" * len(header))
    for arch, entry in OFFICIAL.items():
        path = directory / entry.file_name
        problem = verify(path, entry, progress=True)  # "missing" when there is no file
        rate = default_args(arch)["sample_rate"]
        print(
            f"{arch:<24} {entry.file_name:<38} {entry.mAP:>5.3f} {entry.size_mb:>8.1f} "
            f"{rate:>6}  {_status(path, entry.bytes, problem)}"
        )
    return 0


def cmd_download(names: list[str], directory: Path, url: str | None, timeout: float) -> int:
    for name in names:
        print(download(name, directory, base_url=url, timeout=timeout))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.checkpoints", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="table of the official checkpoints")
    listing.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="checkpoint directory")
    fetch = sub.add_parser("download", help="download, verify and keep official checkpoints")
    fetch.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="architecture (Cnn14) or official file name (Cnn14_mAP=0.431.pth)",
    )
    fetch.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where to put the files")
    fetch.add_argument(
        "--url",
        default=None,
        help=f"base URL of a mirror (default ${BASE_URL_ENV}, then Zenodo); "
        "'{name}' in it is replaced by the file name, else the name is appended",
    )
    fetch.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for the server (connect and each read)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "list":
            return cmd_list(args.dir)
        return cmd_download(args.names, args.dir, args.url, args.timeout)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
