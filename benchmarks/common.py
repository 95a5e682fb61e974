"""What the benchmarks share: the CPU's facts, a process tree's CPU time and memory from /proc,
a free port, and ``python -m service`` started on it and waited for.

Standard library only, so that a benchmark run on a bare host (frontend.py on the GPU host)
imports it with the service's own packages.
"""

from __future__ import annotations

import functools
import http.client
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "flags", ...); {} without.
    Read once per process (callers ask for the model and the flags separately)."""
    path = Path("/proc/cpuinfo")
    first = path.read_text().split("\n\n", 1)[0] if path.is_file() else ""
    fields: dict[str, str] = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` where /proc/cpuinfo has none)."""
    return cpuinfo().get("model name") or platform.processor()


def cpu_flags(wanted: Iterable[str]) -> list[str]:
    """Those of ``wanted`` that this CPU has, in ``wanted``'s order."""
    have = set(cpuinfo().get("flags", "").split())
    return [flag for flag in wanted if flag in have]


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 'state' on


def _tree(root: int) -> dict[int, list[str]]:
    """The /proc stat fields of ``root`` and its live descendants, by pid."""
    parents: dict[int, int] = {}
    fields: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (f := _stat_fields(entry)) is not None:
            parents[int(entry)], fields[int(entry)] = int(f[1]), f
    members, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in members]
        members.update(children)
        frontier.extend(children)
    return {p: fields[p] for p in members if p in fields}


def _role(pid: int, root: int) -> str:
    """What a service process does: ``main`` (the root: the one process, or the
    supervisor), ``engine``, ``front`` (``python -m service.supervisor engine|front N``)."""
    if pid == root:
        return "main"
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    for role in (b"engine", b"front"):
        if role in args:
            return role.decode()
    return "other"


class TreeUsage(NamedTuple):
    cpu_s: float  # reaped children's time is in their parent's cutime/cstime: counted too
    processes: int
    rss_mb: float
    roles: dict[str, float]  # CPU seconds by role (``_role``): where a multi-process tree spends


def tree_usage(root: int) -> TreeUsage:
    """CPU seconds, process count and resident MB of ``root`` and its descendants."""
    tree = _tree(root)
    roles: dict[str, float] = {}
    for pid, f in tree.items():
        role = _role(pid, root)
        roles[role] = roles.get(role, 0.0) + sum(int(x) for x in f[11:15]) / CLK_TCK
    rss_mb = sum(int(f[21]) for f in tree.values()) * PAGE_BYTES / 2**20
    return TreeUsage(sum(roles.values()), len(tree), rss_mb, roles)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(
    port: int,
    settings: Mapping[str, str | None],
    *,
    quiet: bool = False,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """``python -m service`` from this repository on 127.0.0.1:``port``, logging warnings only,
    with ``settings`` over this process's environment (None unsets a variable). ``quiet``: its
    output goes nowhere; ``own_session``: a process group of its own, to signal as a whole."""
    env: dict[str, str | None] = {
        **os.environ,
        "PANNS_HOST": "127.0.0.1",
        "PANNS_PORT": str(port),
        "PANNS_LOG_LEVEL": "warning",
        **settings,
    }
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env={key: value for key, value in env.items() if value is not None},
        stdout=output,
        stderr=output,
        start_new_session=own_session,
    )


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    """Return once the service on ``port`` answers /readyz with 200; stop the benchmark (with
    the reason) if it exits first or is not ready within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with status {proc.returncode}")
        if _ready(port):
            return
        time.sleep(0.2)
    raise SystemExit(f"the service was not ready within {timeout:g} s")
