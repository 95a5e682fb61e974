"""A load generator that costs little CPU: client processes, raw keep-alive sockets, requests
built once, responses read by their Content-Length and counted, nothing parsed beyond that.

``run_load`` starts ``procs`` processes (spawned, so they share nothing with the caller) with
``connections`` blocking sockets each, one thread per socket. All of them post the prepared
requests in a loop from a common start; only responses that complete inside the measurement
window ``[start + warmup, start + warmup + duration]`` (CLOCK_MONOTONIC, the same in every
process) are counted. Each process also reports the CPU it used inside the window.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RECV = 1 << 16


class BadResponse(Exception):
    pass


@dataclass
class _Stats:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


def read_response(sock: socket.socket) -> tuple[int, bool, bytes]:
    """(status, keep-alive, body) of one HTTP/1.1 response with a Content-Length."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(RECV)
        if not chunk:
            raise BadResponse("connection closed before the response headers")
        buf += chunk
    lines = bytes(buf[:end]).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
    headers = {k.strip().lower(): v.strip().lower() for k, v in headers.items()}
    if b"content-length" not in headers:
        raise BadResponse(f"status {status}: no Content-Length (chunked responses unsupported)")
    length = int(headers[b"content-length"])
    body = buf[end + 4 :]
    while len(body) < length:
        chunk = sock.recv(max(RECV, length - len(body)))
        if not chunk:
            raise BadResponse("connection closed inside the response body")
        body += chunk
    return status, headers.get(b"connection") != b"close", bytes(body[:length])


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _connection(
    port: int,
    requests: list[bytes],
    offset: int,
    window: tuple[float, float],
    stop_at: float,
    stats: _Stats,
) -> None:
    """Post requests back to back on one keep-alive connection until ``stop_at``."""
    sock: socket.socket | None = None
    i = offset
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            sock = sock or _connect(port)
            sock.sendall(requests[i % len(requests)])
            status, keep, body = read_response(sock)
        except (OSError, BadResponse, ValueError) as exc:
            stats.errors += 1
            stats.first_error = stats.first_error or f"{type(exc).__name__}: {exc}"
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.01)
            continue
        i += 1
        t1 = time.monotonic()
        if window[0] <= t1 <= window[1]:
            stats.statuses[status] += 1
            stats.latencies.append(t1 - t0)
        if status != 200 and not stats.first_error:
            stats.first_error = f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
        if not keep:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _client(
    port: int,
    requests: list[bytes],
    connections: int,
    first: int,
    window: tuple[float, float],
    queue: Any,
) -> None:
    """One client process: ``connections`` threads; reports its counts and window CPU."""
    stats = [_Stats() for _ in range(connections)]  # one per thread: no shared counters
    threads = [
        threading.Thread(
            target=_connection,
            daemon=True,
            args=(port, requests, first + k, window, window[1], stats[k]),
        )
        for k in range(connections)
    ]
    for t in threads:
        t.start()
    time.sleep(max(0.0, window[0] - time.monotonic()))
    cpu0 = _cpu_s()
    time.sleep(max(0.0, window[1] - time.monotonic()))
    cpu1 = _cpu_s()
    for t in threads:
        t.join(130)
    statuses: Counter[int] = Counter()
    for s in stats:
        statuses.update(s.statuses)
    queue.put(
        {
            "statuses": dict(statuses),
            "latencies": [x for s in stats for x in s.latencies],
            "errors": sum(s.errors for s in stats),
            "first_error": next((s.first_error for s in stats if s.first_error), ""),
            "cpu_s": cpu1 - cpu0,
        }
    )


@dataclass
class LoadResult:
    duration_s: float
    statuses: Counter[int]
    latencies: list[float]
    errors: int
    first_error: str
    client_cpu_s: float


def run_load(
    port: int,
    requests: list[bytes],
    *,
    procs: int,
    connections: int,
    warmup_s: float,
    duration_s: float,
    at_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Load the server; ``at_window("start"|"end")`` is called at the window's edges."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.monotonic() + 1.5  # the spawned interpreters start in the meantime
    window = (start + warmup_s, start + warmup_s + duration_s)
    workers = [
        ctx.Process(
            target=_client,
            daemon=True,
            args=(port, requests, connections, p * connections, (window[0], window[1]), queue),
        )
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    for edge, at in (("start", window[0]), ("end", window[1])):
        time.sleep(max(0.0, at - time.monotonic()))
        if at_window is not None:
            at_window(edge)
    reports = [queue.get(timeout=180) for _ in workers]
    for w in workers:
        w.join(30)
    total = LoadResult(duration_s, Counter(), [], 0, "", 0.0)
    for rep in reports:
        total.statuses.update({int(k): v for k, v in rep["statuses"].items()})
        total.latencies.extend(rep["latencies"])
        total.errors += rep["errors"]
        total.first_error = total.first_error or rep["first_error"]
        total.client_cpu_s += rep["cpu_s"]
    return total


def probe(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one request on a fresh connection; (status, body)."""
    with _connect(port) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock)
    return status, body
