"""What the benchmarks share: the machine's facts and load, a process tree's (or an event
loop's) CPU time and memory from /proc, a free port, and ``python -m service`` started on it
and waited for.

Standard library only, so that a benchmark run on a bare host (frontend.py on the GPU host)
imports it with the service's own packages.
"""

from __future__ import annotations

import functools
import http.client
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

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


INTERESTING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "hypervisor",
)


def machine() -> dict[str, Any]:
    """CPU model, the SIMD flags that matter here (and whether it is a VM), cores, load:
    recorded with every result."""
    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(INTERESTING_FLAGS),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": sys.version.split()[0],
    }


def _spin(iterations: int, out: Any) -> None:
    started = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i
    out.put(time.perf_counter() - started)


def _spin_in(procs: int, iterations: int) -> float:
    """Seconds until ``procs`` processes, started together, have each run the same loop."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    workers = [ctx.Process(target=_spin, args=(iterations, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    took = max(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join()
    return took


def core_scaling(procs: int, iterations: int = 3_000_000, pairs: int = 3) -> float:
    """How much more pure-Python work ``procs`` processes get done than one, here and now:
    the machine's own ceiling for a service's N-vs-1 ratio. A VM's vCPUs are not always
    whole cores (SMT siblings, or a host that runs other guests on the same cores): two
    processes then do less than twice one's work whatever the service does. The median of
    ``pairs`` alternating 1-then-N runs (~0.2 s each on a 2-core VM)."""
    ratios = []
    for _ in range(pairs):
        one = _spin_in(1, iterations)
        many = _spin_in(procs, iterations)
        ratios.append(procs * one / many)
    return round(statistics.median(ratios), 2)


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


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
    roles: dict[str, float]  # CPU seconds by role (``_role``), when asked for: else {}
    loops: dict[str, float]  # of which their main threads' (the event loops), by role


def tree_usage(root: int, by_role: bool = False) -> TreeUsage:
    """CPU seconds, process count and resident MB of ``root`` and its descendants; with
    ``by_role`` also the CPU seconds of each role (which reads every process's command line:
    not for a sampler that wants the memory)."""
    tree = _tree(root)
    cpu = {pid: sum(int(x) for x in f[11:15]) / CLK_TCK for pid, f in tree.items()}
    roles: dict[str, float] = {}
    loops: dict[str, float] = {}
    if by_role:
        for pid, seconds in cpu.items():
            role = _role(pid, root)
            roles[role] = roles.get(role, 0.0) + seconds
            loops[role] = loops.get(role, 0.0) + main_thread_cpu_s(pid)
    rss_mb = sum(int(f[21]) for f in tree.values()) * PAGE_BYTES / 2**20
    return TreeUsage(sum(cpu.values()), len(tree), rss_mb, roles, loops)


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread (an event loop's, in a service process)."""
    fields = _stat_fields(f"{pid}/task/{pid}")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


def save_json(path: Path | None, result: Mapping[str, Any]) -> None:
    """Write a benchmark's result as JSON to ``path`` (nothing when None); called after each
    step, a run cut short keeps what it measured."""
    if path is not None:
        path.write_text(json.dumps(result, indent=2) + "\n")


def emit(result: Mapping[str, Any], path: Path | None) -> None:
    """Print a benchmark's result as JSON and write it to ``path`` too."""
    print(json.dumps(result, indent=2))
    save_json(path, result)


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
