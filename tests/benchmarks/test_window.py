"""``benchmarks.window``: the window's figures from real /proc reads, and its GC arithmetic
(a real service's edges are covered by ``test_frontend``'s load run)."""

from __future__ import annotations

import collections
import os

from benchmarks.common import free_port
from benchmarks.loadgen import LoadResult
from benchmarks.window import Window, gc_in_window, latency


def test_gc_in_window_counts_only_what_the_window_added() -> None:
    start = {"0": (10.0, 0.010), "1": (2.0, 0.004)}
    end = {"0": (30.0, 0.050), "1": (2.0, 0.004), "2": (1.0, 0.020)}  # gen 2: first seen
    got = gc_in_window(start, end, ok=40)
    assert got == {
        "0": {"collections": 20, "ms_per_clip": 1.0},
        "1": {"collections": 0, "ms_per_clip": 0.0},
        "2": {"collections": 1, "ms_per_clip": 0.5},
    }
    assert gc_in_window(start, {}, ok=40) is None  # a service without the histogram
    assert gc_in_window(start, end, ok=0) is None  # nothing served: no per-clip figure


def test_window_over_this_process_without_a_service() -> None:
    """No server on the port: no GC figures, but the CPU, RSS and busy reads still hold."""
    window = Window(free_port(), os.getpid())
    window.mark("start")
    sum(i * i for i in range(200_000))  # some CPU inside the window
    window.mark("end")
    load = LoadResult(2.0, collections.Counter({200: 8, 503: 2}), [0.01] * 10, 0, "", 0.004)
    got = window.figures(load)
    assert (got["clips_per_s"], got["ok"], got["statuses"]) == (4.0, 8, {"200": 8, "503": 2})
    assert got["gc"] is None and got["first_error"] is None
    assert got["server_cpu_ms_per_clip"] > 0 and got["server_rss_mb"] > 0
    assert got["client_cpu_ms_per_clip"] == 0.5
    assert set(got["server_loop_cpu_ms_per_clip_by_role"]) <= set(
        got["server_cpu_ms_per_clip_by_role"]
    )


def test_latency_percentiles_in_ms() -> None:
    got = latency([i / 1000 for i in range(1, 101)])  # 1 .. 100 ms
    assert got["max_ms"] == 100.0
    assert got["p50_ms"] is not None and 49 <= got["p50_ms"] <= 51
    assert latency([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
