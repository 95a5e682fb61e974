"""Batcher policies side by side: batch fill, latency and throughput under one synthetic load.

    python benchmarks/batcher_fill.py [--seconds 2] [--rounds 3] [--rates 300,600,900]
                                      [--clients 64] [--json PATH]

The engine emulates a GPU: ``infer`` sleeps ``--fixed-ms + --per-window-ms x batch`` in the
engine thread (releasing the GIL, as a device call does) after reading every window it was
given; windows are real 10 s clips at 32 kHz (1.28 MB each), so stacking costs what it costs in
the service. Policies (the same ``Batcher``, flags only):

- ``old``: cut when full or after ``max_delay``; stack and run one batch at a time.
- ``idle_cut``: also cut at once when the engine is idle.
- ``new``: idle cut, and the next batch is stacked while the engine runs (the default).

Loads, each run ``--rounds`` times with every policy in turn (identical arrival schedules; a
change in machine load hits every policy alike); each figure is the median over the rounds:

- ``lone``: one 1-window request at a time (an idle service): latency p50 / p95.
- ``open_<rate>``: Poisson arrivals of 1-window requests at each of ``--rates`` per second:
  mean batch size, latency p50 / p99, throughput.
- ``saturated``: ``--clients`` clients each sending 1-window requests back to back: mean batch
  size, throughput, latency p50.

Prints one JSON document (with the machine). Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_flags, cpu_model  # noqa: E402
from service.core.batch import InferFn, InferInput  # noqa: E402
from service.core.batcher import Batcher  # noqa: E402

POLICIES = {
    "old": {"cut_when_idle": False, "pipeline": False},
    "idle_cut": {"cut_when_idle": True, "pipeline": False},
    "new": {"cut_when_idle": True, "pipeline": True},
}
SAMPLES = 320_000  # 10 s at 32 kHz
Load = Callable[[Batcher], Coroutine[Any, Any, dict[str, float]]]


class Stats:
    """BatchObserver: batch sizes, engine time and stacking time."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.compute_s = self.stack_s = 0.0

    def batch_stacked(self, size: int, stack_s: float) -> None:
        self.stack_s += stack_s

    def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None:
        self.sizes.append(size)
        self.compute_s += compute_s

    def depth_changed(self, depth: int) -> None: ...

    def dropped(self, reason: str, count: int) -> None: ...


def fake_gpu(fixed_s: float, per_window_s: float) -> InferFn:
    def infer(windows: InferInput) -> dict[str, np.ndarray]:
        batch = np.asarray(windows)  # stacked by the batcher: as it is
        level = batch[:, ::4096].mean(axis=1, keepdims=True)  # reads every window
        time.sleep(fixed_s + per_window_s * batch.shape[0])
        return {"clipwise": np.repeat(level, 527, axis=1)}

    return infer


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def lone(b: Batcher, clips: list[np.ndarray], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        await b.submit([clips[len(latencies) % len(clips)]], start + 60)
        latencies.append(time.monotonic() - start)
        await asyncio.sleep(0.01)  # the engine is idle when the next one comes
    return {
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
    }


async def open_loop(b: Batcher, clips: list[np.ndarray], gaps: np.ndarray) -> dict[str, float]:
    latencies: list[float] = []

    async def one(i: int) -> None:
        start = time.monotonic()
        await b.submit([clips[i % len(clips)]], start + 60)
        latencies.append(time.monotonic() - start)

    tasks, begin, due = [], time.monotonic(), 0.0
    for i, gap in enumerate(gaps):
        due += gap
        await asyncio.sleep(max(0.0, begin + due - time.monotonic()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    span = time.monotonic() - begin
    return {
        "requests": len(gaps),
        "windows_per_s": len(gaps) / span,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def saturated(
    b: Batcher, clips: list[np.ndarray], clients: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def client(k: int) -> None:
        while time.monotonic() < end:
            start = time.monotonic()
            await b.submit([clips[(k + len(latencies)) % len(clips)]], start + 60)
            latencies.append(time.monotonic() - start)

    begin = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    span = time.monotonic() - begin
    return {
        "requests": len(latencies),
        "windows_per_s": len(latencies) / span,
        "p50_ms": percentile(latencies, 50),
    }


async def measure(
    policy: dict[str, bool],
    args: argparse.Namespace,
    load: Load,
) -> dict[str, float]:
    stats = Stats()
    b = Batcher(
        fake_gpu(args.fixed_ms / 1000, args.per_window_ms / 1000),
        max_batch=args.max_batch,
        max_delay_s=args.max_delay_ms / 1000,
        max_queue=100_000,
        observer=stats,
        name="bench",
        **policy,
    )
    b.start()
    begin = time.monotonic()
    result = await load(b)
    wall = time.monotonic() - begin
    await b.stop()
    result["mean_batch"] = statistics.fmean(stats.sizes) if stats.sizes else 0.0
    result["engine_busy"] = stats.compute_s / wall
    result["stack_ms_per_batch"] = 1000 * stats.stack_s / max(1, len(stats.sizes))
    return {k: round(v, 3) for k, v in result.items()}


def run_load(load: Load, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every policy on one load, in alternating rounds; the median of each figure."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in POLICIES}
    for _ in range(args.rounds):
        for name, policy in POLICIES.items():
            rounds[name].append(asyncio.run(measure(policy, args, load)))
    return {
        name: {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
        for name, runs in rounds.items()
    }


def summary(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, object]:
    """The figures issue 11 asks for, old policy vs new."""
    old, new = "old", "new"
    out: dict[str, object] = {
        "lone_p50_ms": {old: results["lone"][old]["p50_ms"], new: results["lone"][new]["p50_ms"]}
    }
    for load, by_policy in results.items():
        if load != "lone":
            out[f"{load}_mean_batch"] = {p: by_policy[p]["mean_batch"] for p in (old, new)}
            out[f"{load}_windows_per_s"] = {p: by_policy[p]["windows_per_s"] for p in (old, new)}
    return out


def machine() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(("avx", "avx2", "avx512f", "avx512_vnni", "fma", "f16c")),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "loadavg_start": os.getloadavg(),
    }


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per load, policy and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rates", default="300,600,900", help="open loads: requests per second")
    p.add_argument("--clients", type=int, default=64, help="saturated load: clients")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--fixed-ms", type=float, default=4.0, help="engine time per batch")
    p.add_argument("--per-window-ms", type=float, default=0.25, help="engine time per window")
    p.add_argument("--json", type=Path, dest="json_out")
    return p.parse_args()


def main() -> int:
    args = parse()
    host = machine()
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(SAMPLES, dtype=np.float32) * 0.1 for _ in range(32)]
    loads: dict[str, Load] = {"lone": lambda b: lone(b, clips, args.seconds / 2)}
    for rate in map(float, args.rates.split(",")):
        gaps = rng.exponential(1 / rate, size=int(rate * args.seconds))
        loads[f"open_{rate:g}"] = functools.partial(open_loop, clips=clips, gaps=gaps)
    loads["saturated"] = lambda b: saturated(b, clips, args.clients, args.seconds)
    results = {name: run_load(load, args) for name, load in loads.items()}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "engine": {
            "fixed_ms": args.fixed_ms,
            "per_window_ms": args.per_window_ms,
            "window_samples": SAMPLES,
        },
        "batcher": {"max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms},
        "machine": host | {"loadavg_end": os.getloadavg()},
        "summary": summary(results),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
