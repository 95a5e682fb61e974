"""Atomic replacement of a bundle directory.

A new bundle is complete in a sibling temporary directory before it becomes visible. On Linux
an existing bundle is swapped with ``renameat2(RENAME_EXCHANGE)``, so readers see either the old
or the new bundle, never neither; elsewhere (or on file systems without it) the old one is
renamed aside first and the window with no bundle is two renames long.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_tree(directory: Path) -> None:
    """Flush every file of ``directory`` and the directory itself to disk."""
    for path in sorted(directory.iterdir()):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False when unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result != 0:
        log.debug("renameat2 failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def replace_dir(new: Path, target: Path) -> None:
    """Make the complete directory ``new`` appear at ``target``, replacing any old one."""
    fsync_tree(new)
    if not target.exists():
        os.rename(new, target)
    elif target.is_dir() and not target.is_symlink() and _exchange(new, target):
        shutil.rmtree(new)  # ``new`` now holds the old bundle
    else:
        aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, aside)
        os.rename(new, target)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    _fsync_dir(target.parent)
