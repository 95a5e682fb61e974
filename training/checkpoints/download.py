"""Downloading official checkpoints: streaming, resumable, verified, atomic.

The file is written to ``<name>.part`` (resumed with an HTTP Range request when a previous
attempt left one), checked against the registry's size and SHA-256, then renamed into place.
A verified file already in the directory is reused without touching the network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from training.checkpoints.registry import (
    CheckpointError,
    OfficialCheckpoint,
    checkpoint_url,
    get_official,
)

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("models/checkpoints")
DEFAULT_TIMEOUT = 10.0  # seconds to connect, and to wait for each block of data
_CHUNK = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


def sha256_file(path: Path, progress: bool = False) -> str:
    """The hex SHA-256 of a file, with a progress bar when asked (big checkpoints take a while)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        path.open("rb") as fh,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            leave=False,
            desc=f"sha256 {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while block := fh.read(_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify(path: str | Path, entry: OfficialCheckpoint, progress: bool = False) -> str | None:
    """``None`` when ``path`` has ``entry``'s size and SHA-256, else what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry.bytes:
        return f"size {size} bytes, expected {entry.bytes}"
    digest = sha256_file(path, progress)
    if digest != entry.sha256:
        return f"SHA-256 {digest}, expected {entry.sha256}"
    return None


def hand_placement_help(entry: OfficialCheckpoint, dest: Path, url: str) -> str:
    """Instructions to fetch ``entry`` by hand when this machine cannot."""
    return (
        f"Download it by hand and put it at {dest}\n"
        f"  file:   {entry.file_name}\n  url:    {url}\n"
        f"  size:   {entry.bytes} bytes\n  sha256: {entry.sha256}\n"
        "A file with that size and SHA-256 is then used without network."
    )


def download(
    name: str | OfficialCheckpoint,
    dest_dir: str | Path = DEFAULT_DIR,
    *,
    base_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Path:
    """Make sure the verified official file ``name`` is in ``dest_dir`` and return its path.

    ``name`` is an architecture, an official file name or an :class:`OfficialCheckpoint`
    (tests pass their own entry). ``base_url`` (default ``$PANNS_CHECKPOINT_URL``, then Zenodo)
    is described in :func:`~training.checkpoints.registry.checkpoint_url`.
    """
    entry = name if isinstance(name, OfficialCheckpoint) else get_official(name)
    dest = Path(dest_dir) / entry.file_name
    if _already_there(dest, entry, progress):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = checkpoint_url(entry, base_url)
    part = dest.with_name(dest.name + ".part")
    try:
        _resolve_host(url, timeout)
        _fetch(url, part, entry, timeout, progress)
    except _NETWORK_ERRORS as exc:
        size = part.stat().st_size if part.is_file() else 0
        kept = f" ({size} bytes received are kept in {part.name}; rerun to resume)" if size else ""
        raise CheckpointError(
            f"could not download {entry.file_name} from {url}: "
            f"{_reason(exc)}{kept}.\n" + hand_placement_help(entry, dest, url)
        ) from None
    except CheckpointError as exc:
        part.unlink(missing_ok=True)
        raise CheckpointError(f"{exc}\n{hand_placement_help(entry, dest, url)}") from None
    problem = verify(part, entry, progress)
    if problem is not None:
        part.unlink()
        raise CheckpointError(
            f"downloaded {entry.file_name} from {url} is corrupt ({problem}); "
            "the download was deleted.\n" + hand_placement_help(entry, dest, url)
        )
    os.replace(part, dest)
    log.info("%s: downloaded and verified", dest)
    return dest


def _already_there(dest: Path, entry: OfficialCheckpoint, progress: bool) -> bool:
    if not dest.is_file():
        return False
    problem = verify(dest, entry, progress)
    if problem is None:
        log.info("%s: present and verified, not downloading", dest)
        return True
    log.warning("%s is present but wrong (%s); downloading it again", dest, problem)
    return False


def _resolve_host(url: str, timeout: float) -> None:
    """Look the host up with a deadline: without network a DNS query can hang far longer."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise urllib.error.URLError(f"not a download URL: {url!r}")
    outcome: list[OSError | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(parts.hostname, parts.port or 443)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise urllib.error.URLError(f"cannot resolve {parts.hostname} within {timeout:g} s")
    if outcome[0] is not None:
        raise urllib.error.URLError(outcome[0])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed early ({exc.expected} bytes missing)"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _fetch(url: str, part: Path, entry: OfficialCheckpoint, timeout: float, progress: bool) -> None:
    """Fill ``part`` up to ``entry.bytes``, resuming what is there when the server allows it."""
    have = part.stat().st_size if part.is_file() else 0
    if have >= entry.bytes:  # complete or overlong: check it, restart from zero when wrong
        if have == entry.bytes and verify(part, entry) is None:
            return
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": "panns-checkpoints"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        part.unlink()  # the server says our partial file is not a prefix of its file
        _fetch(url, part, entry, timeout, progress)
        return
    with response:
        start = _resume_offset(response, have)
        _check_length(response, entry.bytes - start, url)
        _stream(response, part, start, entry, progress)


def _resume_offset(response: http.client.HTTPResponse, have: int) -> int:
    """Where the response body starts: ``have`` for a 206 reply, 0 when Range was ignored."""
    if response.status != 206:
        if have:
            log.info("server ignored the Range request; restarting from the beginning")
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:
        raise http.client.HTTPException(
            f"bad Content-Range {response.headers.get('Content-Range')!r} for offset {have}"
        )
    return have


def _check_length(response: http.client.HTTPResponse, expected: int, url: str) -> None:
    length = response.headers.get("Content-Length")
    if length is not None and int(length) != expected:
        kind = response.headers.get("Content-Type", "unknown type")
        raise CheckpointError(
            f"{url} sends {length} bytes of {kind}, expected {expected}: "
            "not the official file (an error page or a wrong mirror?)"
        )


def _stream(
    response: http.client.HTTPResponse,
    part: Path,
    start: int,
    entry: OfficialCheckpoint,
    progress: bool,
) -> None:
    with (
        part.open("r+b" if start else "wb") as fh,
        tqdm(
            total=entry.bytes,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=entry.file_name,
            disable=not progress,
        ) as bar,
    ):
        fh.seek(start)
        fh.truncate()
        received = start
        while block := response.read(_CHUNK):
            received += len(block)
            if received > entry.bytes:
                raise CheckpointError(
                    f"{response.geturl()} sends more than the expected "
                    f"{entry.bytes} bytes: not the official file"
                )
            fh.write(block)
            bar.update(len(block))
        fh.flush()
        os.fsync(fh.fileno())
    if received < entry.bytes:
        raise http.client.IncompleteRead(b"", entry.bytes - received)
