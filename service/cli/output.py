"""Where ``panns tag`` writes: JSONL or CSV, one line per file, flushed as each file ends.

A line is written whole or not at all, so an interrupted run leaves at most one unfinished
last line. ``--resume`` reads the file back, keeps the lines of files that have a result
(dropping error lines, duplicates and an unfinished last line, rewritten atomically), and
returns their paths so they are skipped; files with an error line are tried again.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO

import orjson

from service.cli.common import FatalError, Json

FORMATS = ("jsonl", "csv")


class Writer(Protocol):
    def write(self, rec: Json) -> None: ...
    def close(self) -> None: ...


def format_of(out: Path | None, asked: str | None) -> str:
    """``--format`` if given, else from the output's extension (JSONL by default)."""
    if asked:
        return asked
    return "csv" if out is not None and out.suffix.lower() == ".csv" else "jsonl"


def csv_header(top_k: int) -> list[str]:
    columns = ["path", "duration_s", "error"]
    for rank in range(1, top_k + 1):
        columns += [f"label_{rank}", f"score_{rank}"]
    return columns


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def csv_row(rec: Json, top_k: int) -> list[str]:
    """path, duration, ``code: message`` (empty when tagged), then the top labels and scores."""
    error = rec.get("error")
    duration = rec.get("duration_s")
    row = [
        _one_line(str(rec["path"])),
        "" if duration is None else str(duration),
        "" if error is None else _one_line(f"{error['code']}: {error['message']}"),
    ]
    top = rec.get("top") or []
    for rank in range(top_k):
        row += [top[rank]["label"], str(top[rank]["score"])] if rank < len(top) else ["", ""]
    return row


def _csv_line(row: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


class LineWriter:
    """Writes each record as one line (one ``write`` call) and flushes it."""

    def __init__(self, stream: TextIO, encode: Callable[[Json], str], owned: bool) -> None:
        self.stream, self.encode, self.owned = stream, encode, owned

    def write(self, rec: Json) -> None:
        self.stream.write(self.encode(rec))
        self.stream.flush()

    def close(self) -> None:
        if self.owned:
            self.stream.close()
        else:
            self.stream.flush()


def _encoder(fmt: str, top_k: int) -> Callable[[Json], str]:
    if fmt == "csv":
        return lambda rec: _csv_line(csv_row(rec, top_k))
    return lambda rec: orjson.dumps(rec).decode() + "\n"


def _jsonl_done(line: str) -> str | None:
    """The path of a JSONL line holding a result (None: an error line or not a record)."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or rec.get("error") is not None:
        return None
    path = rec.get("path")
    return path if isinstance(path, str) else None


def _csv_done(line: str, header: list[str]) -> str | None:
    row = next(csv.reader([line]), [])
    if len(row) != len(header) or row[2]:
        return None
    return row[0]


def kept_lines(text: str, fmt: str, top_k: int) -> tuple[list[str], set[str]]:
    """The complete lines of files with a result (first one per path) and their paths."""
    lines = text.split("\n")[:-1]  # what follows the last newline is unfinished
    header = csv_header(top_k)
    if fmt == "csv" and lines and next(csv.reader([lines[0]]), []) != header:
        raise FatalError(
            f"the CSV to resume has other columns than this run writes ({len(header)}: "
            "use the same --top-k)"
        )
    kept, done = [], set()
    for line in lines:
        path = _csv_done(line, header) if fmt == "csv" else _jsonl_done(line)
        if path is not None and path not in done:
            kept.append(line)
            done.add(path)
    if fmt == "csv":
        kept.insert(0, _csv_line(header).rstrip("\n"))
    return kept, done


def _rewrite(out: Path, lines: list[str]) -> None:
    """Replace ``out`` with ``lines`` atomically (a crash leaves the old or the new file)."""
    tmp = out.with_name(f".{out.name}.resume-{os.getpid()}")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


def resume(out: Path, fmt: str, top_k: int) -> set[str]:
    """Keep the result lines of ``out`` (rewriting it if anything is dropped); their paths."""
    if not out.exists():
        return set()
    text = out.read_text(encoding="utf-8", errors="replace")
    lines, done = kept_lines(text, fmt, top_k)
    if "".join(line + "\n" for line in lines) != text:
        _rewrite(out, lines)
    return done


def check_target(out: Path | None, resume_run: bool, overwrite: bool) -> None:
    """Refuse to lose an earlier run's lines, or to resume what cannot be read back."""
    if resume_run and (out is None or overwrite):
        raise FatalError("--resume needs --out FILE (and no --overwrite)")
    if out is not None and out.exists() and out.stat().st_size and not (resume_run or overwrite):
        raise FatalError(f"{out} exists: pass --resume to continue it or --overwrite")


def open_output(
    out: Path | None, fmt: str, top_k: int, resume_run: bool
) -> tuple[Writer, set[str]]:
    """The writer for this run and the paths it skips (those already done, with --resume)."""
    encode = _encoder(fmt, top_k)
    if out is None:
        if fmt == "csv":
            sys.stdout.write(_csv_line(csv_header(top_k)))
        return LineWriter(sys.stdout, encode, owned=False), set()
    done = resume(out, fmt, top_k) if resume_run else set()
    stream = out.open("a" if resume_run else "w", encoding="utf-8", newline="")
    if fmt == "csv" and stream.tell() == 0:
        stream.write(_csv_line(csv_header(top_k)))
    return LineWriter(stream, encode, owned=True), done
