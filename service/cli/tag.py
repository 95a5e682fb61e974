"""``panns tag``: tag files and folders through a running service or in this process.

Files are sent ``--concurrency`` at a time; each ends with one output line (a result or an
error), written as soon as it is known, so Ctrl-C loses nothing that was finished and
``--resume`` continues where a run stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.cli.common import FatalError, FileTagger, Json, TagParams, error_record
from service.cli.output import FORMATS, check_target, format_of, open_output

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})


def _audio_under(directory: Path, recursive: bool) -> list[Path]:
    """The audio files in ``directory`` (its whole tree when ``recursive``), hidden ones
    left out, in a stable order."""
    found = directory.rglob("*") if recursive else directory.glob("*")
    keep = []
    for path in found:
        parts = path.relative_to(directory).parts
        hidden = any(part.startswith(".") for part in parts)
        if not hidden and path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            keep.append(path)
    return sorted(keep, key=lambda p: p.relative_to(directory).parts)


def expand(paths: Iterable[Path], recursive: bool) -> list[Path]:
    """Files as named (whatever their extension); folders by their audio files; each once."""
    seen: dict[str, Path] = {}
    for path in paths:
        for found in _audio_under(path, recursive) if path.is_dir() else [path]:
            seen.setdefault(str(found), found)
    return list(seen.values())


@dataclass
class Tally:
    """What the summary reports."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    audio_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def add(self, rec: Json) -> None:
        if rec.get("error") is None:
            self.ok += 1
            self.audio_s += rec.get("duration_s") or 0.0
        else:
            self.failed += 1

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started

    def summary(self, out: Path | None, interrupted: bool) -> str:
        wall = max(self.wall_s, 1e-9)
        done = self.ok + self.failed
        head = "interrupted: " if interrupted else ""
        skipped = f", {self.skipped} skipped (already in {out})" if self.skipped else ""
        return (
            f"panns tag: {head}{self.ok} ok, {self.failed} failed{skipped}; "
            f"{self.audio_s:.1f} s of audio in {wall:.1f} s "
            f"({self.audio_s / wall:.1f}x real time, {done / wall:.2f} files/s)"
        )


class Progress:
    """A bar on stderr (files/s, audio hours/s, ETA) when it is a terminal; failures listed."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = tqdm(total=total, unit="file", file=sys.stderr, disable=True if quiet else None)

    def update(self, rec: Json, tally: Tally) -> None:
        error = rec.get("error")
        if error is not None and not self.quiet:
            tqdm.write(f"failed: {rec['path']}: {error['code']}: {error['message']}", sys.stderr)
        hours_per_s = tally.audio_s / 3600 / max(tally.wall_s, 1e-9)
        self.bar.set_postfix_str(f"{hours_per_s:.3f} audio h/s, {tally.failed} failed", False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


async def read_and_tag(tagger: FileTagger, path: Path) -> Json:
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        return error_record(path, "unreadable", f"cannot read {path}: {exc.strerror or exc}")
    return await tagger.tag(path, data)


async def tag_files(
    tagger: FileTagger, files: list[Path], concurrency: int, done: Callable[[Json], None]
) -> None:
    """``concurrency`` workers take the next file until none is left; ``done`` gets each
    record as it completes. A ``FatalError`` (or a cancel) stops every worker."""
    pending = iter(files)

    async def worker() -> None:
        for path in pending:
            done(await read_and_tag(tagger, path))

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(files))))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def make_tagger(args: argparse.Namespace, params: TagParams) -> AbstractAsyncContextManager[Any]:
    if args.url:
        from service.cli.client import ClientOptions, RemoteTagger

        key = args.api_key or os.environ.get("PANNS_API_KEY") or None
        options = ClientOptions(
            args.url, key, args.timeout, args.retries, args.max_wait, args.concurrency
        )
        return RemoteTagger(options, params)
    from service.cli.local import LocalTagger  # imports the runtime only when used

    return LocalTagger(args.bundle, params, args.timeout)


def params_of(args: argparse.Namespace) -> TagParams:
    return TagParams(
        args.model,
        args.top_k,
        args.threshold,
        args.aggregate,
        args.window_s,
        args.hop_s,
        not args.no_scores,
    )


async def run(args: argparse.Namespace, tally: Tally) -> None:
    """Expand the paths, start the tagger, skip what is done, tag the rest."""
    files = expand(args.paths, args.recursive)
    fmt = format_of(args.out, args.format)
    check_target(args.out, args.resume, args.overwrite)
    async with make_tagger(args, params_of(args)) as tagger:
        writer, done = open_output(args.out, fmt, args.top_k, args.resume)
        todo = [f for f in files if str(f) not in done]
        tally.skipped, tally.started = len(files) - len(todo), time.monotonic()
        progress = Progress(len(todo), args.quiet)

        def finished(rec: Json) -> None:
            writer.write(rec)
            tally.add(rec)
            progress.update(rec, tally)

        try:
            await tag_files(tagger, todo, args.concurrency, finished)
        finally:
            progress.close()
            writer.close()


def command(args: argparse.Namespace) -> int:
    """Exit status: 0 all tagged, 1 some failed, 2 nothing could be tagged, 130 Ctrl-C."""
    tally = Tally()
    try:
        asyncio.run(run(args, tally))
    except FatalError as exc:
        print(f"panns tag: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(tally.summary(args.out, interrupted=True), file=sys.stderr)
        return 130
    print(tally.summary(args.out, interrupted=False), file=sys.stderr)
    return 1 if tally.failed else 0


def number(kind: type[int] | type[float], zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number > 0 (>= 0 with ``zero``)."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero else '>'} 0, not {text}")
        return value

    return parse


def add_parser(commands: Any) -> None:
    p = commands.add_parser("tag", help="tag audio files and folders", description=__doc__)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    p.add_argument("-r", "--recursive", action="store_true", help="walk folders' subfolders")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running service, e.g. http://localhost:8000")
    where.add_argument("--bundle", help="bundle dir(s), comma-separated (default: PANNS_MODELS)")
    _add_request_options(p)
    _add_output_options(p)
    _add_run_options(p)
    p.set_defaults(run=command)


def _add_request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (default: the first bundle's)")
    p.add_argument("--top-k", type=number(int), default=10, help="labels per file (10)")
    p.add_argument("--threshold", type=float, help="only labels scoring at least this")
    p.add_argument("--aggregate", choices=("max", "mean"), default="max", help="over windows")
    p.add_argument("--window-s", type=number(float), help="window length (the model's)")
    p.add_argument("--hop-s", type=number(float), help="window hop (= window)")
    p.add_argument("--no-scores", action="store_true", help="leave out the full score vector")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", type=Path, help="FILE.jsonl or FILE.csv (default: stdout)")
    p.add_argument("--format", choices=FORMATS, help="default: from --out's extension")
    p.add_argument("--resume", action="store_true", help="skip files --out already has")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--concurrency", type=number(int), default=8, help="files at once")
    p.add_argument(
        "--timeout",
        type=number(float),
        default=300.0,
        help="seconds per file (per attempt with --url)",
    )
    p.add_argument(
        "--retries", type=number(int, zero=True), default=5, help="--url: on connection errors"
    )
    p.add_argument(
        "--max-wait", type=number(float, zero=True), default=600.0, help="--url: on 503, per file"
    )
    p.add_argument("--api-key", help="--url: the service's key (default: $PANNS_API_KEY)")
