"""What a server did inside a measured load window: ``frontend.py``'s per-format figures.

``Window.mark`` is the load generator's ``at_window`` callback: at each edge it reads the
server's process tree (CPU by role and by event loop, RSS: ``common.tree_usage``), the
machine's busy time, and the server's garbage-collection pauses from its ``/metrics``. The
scrape costs the server CPU, so it is taken outside the window (before it opens, after it
closes) and the window's CPU per clip does not count it. ``Window.figures`` turns the two
edges and the load's result into the JSON ``frontend.py`` reports; ``Window.idle_rss_mb``
reads what the server holds once the load has stopped.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import TreeUsage, machine_busy, tree_usage
from benchmarks.loadgen import LoadResult
from benchmarks.ratios import machine_cores, percentile_ms


def gc_pauses(port: int) -> dict[str, tuple[float, float]]:
    """{generation: (collections, seconds)} summed over the service's processes, from its
    ``panns_gc_pause_seconds`` histogram (empty for a service without it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "panns_gc_pause_seconds":
            continue
        for sample in family.samples:
            slot = {"_count": 0, "_sum": 1}.get(sample.name.removeprefix(family.name))
            if slot is not None:
                out.setdefault(sample.labels["generation"], [0.0, 0.0])[slot] += sample.value
    return {gen: (count, seconds) for gen, (count, seconds) in out.items()}


def gc_in_window(
    start: dict[str, tuple[float, float]], end: dict[str, tuple[float, float]], ok: int
) -> dict[str, Any] | None:
    """The collections inside the window, by generation: how many, and ms per clip."""
    if not end or not ok:
        return None
    return {
        gen: {
            "collections": int(count - start.get(gen, (0, 0))[0]),
            "ms_per_clip": round(1000 * (seconds - start.get(gen, (0, 0))[1]) / ok, 3),
        }
        for gen, (count, seconds) in sorted(end.items())
    }


class Window:
    """The server's usage at the load window's two edges (``mark``), and what it comes to."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.pid = port, pid
        self.usage: dict[str, TreeUsage] = {}
        self.busy: dict[str, tuple[int, int]] = {}
        self.gc: dict[str, dict[str, tuple[float, float]]] = {}

    def mark(self, edge: str) -> None:
        """``at_window``: the scrapes lie outside the window, the CPU reads at its edges."""
        if edge == "start":
            self.gc[edge] = gc_pauses(self.port)
        self.usage[edge] = tree_usage(self.pid, by_role=True)
        self.busy[edge] = machine_busy()
        if edge == "end":
            self.gc[edge] = gc_pauses(self.port)

    def idle_rss_mb(self, settle_s: float = 1.0) -> float:
        """The server's resident MB once the load has stopped (after ``settle_s``)."""
        time.sleep(settle_s)
        return tree_usage(self.pid).rss_mb

    def figures(self, load: LoadResult) -> dict[str, Any]:
        """Clips/s, latency, GC, CPU per clip (all, by role, by event loop), RSS, busy."""
        ok = load.statuses.get(200, 0)
        return {
            "clips_per_s": round(ok / load.duration_s, 1),
            "ok": ok,
            "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
            "transport_errors": load.errors,
            "first_error": load.first_error or None,
            **latency(load.latencies),
            # Python's garbage collections in the server's processes (no request moves then)
            "gc": gc_in_window(self.gc["start"], self.gc["end"], ok),
            **self._cpu(load, ok),
        }

    def _cpu(self, load: LoadResult, ok: int) -> dict[str, Any]:
        start, end = self.usage["start"], self.usage["end"]
        cpu = end.cpu_s - start.cpu_s
        busy = [e - s for s, e in zip(self.busy["start"], self.busy["end"], strict=True)]

        def per_clip(seconds: float) -> float | None:
            return round(1000 * seconds / ok, 2) if ok else None

        return {
            "server_cpu_ms_per_clip": per_clip(cpu),
            "server_cores_busy": round(cpu / load.duration_s, 2),
            # where the CPU went with several processes: main (one process, or the
            # supervisor), engine, fronts (together); a role that appeared mid-window counts
            # from zero
            "server_cpu_ms_per_clip_by_role": {
                role: per_clip(seconds - start.roles.get(role, 0.0))
                for role, seconds in sorted(end.roles.items())
            },
            # of which the processes' main threads (their event loops); the rest is their
            # threads (the batcher's engine and stacking threads, decoding, ORT's pool)
            "server_loop_cpu_ms_per_clip_by_role": {
                role: per_clip(seconds - start.loops.get(role, 0.0))
                for role, seconds in sorted(end.loops.items())
            },
            "server_processes": end.processes,
            "server_rss_mb": round(end.rss_mb),  # all server processes, at the window's end
            "client_cpu_ms_per_clip": per_clip(load.client_cpu_s),
            "machine_busy_pct": round(100 * busy[0] / busy[1], 1) if busy[1] else None,
            # cores busy with neither the server nor the clients: other work on the machine,
            # which makes clips/s (not CPU per clip) unreliable
            "others_cores_busy": round(
                machine_cores(busy) - (cpu + load.client_cpu_s) / load.duration_s, 2
            ),
        }


def latency(latencies: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of a load's latencies, in ms."""
    return {
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }
