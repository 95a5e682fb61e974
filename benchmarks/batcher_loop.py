"""The event loop's CPU per window in the batcher, by how requests reach it.

With ``PANNS_WORKERS`` > 1 every window of every front passes through the engine process's one
event loop, so its CPU per window bounds the windows/s one engine takes. The engine used to
give each submit a task (``create_task(batcher.submit(...))``); it now calls
``Batcher.enqueue`` and answers from the future's done callback. This runs both ways into
today's batcher side by side in one run (what a task per submit costs; the old ``submit`` also
had a timeout scope, gone from both here), on the real batcher with a near-free ``infer`` (no
ORT, no sockets, no answer encoding): ``--concurrency`` one-window requests kept in flight,
each answered request replaced by a new one, as a front keeps its submits coming. Prints
JSON: microseconds per window of the loop thread's CPU (``runs``, ``median``), of the whole
process's CPU (the engine thread's hand-off included) and of wall time. ``--max-batch 1
--concurrency 1`` is a lone request's path through the batcher, one batch per window.

    .venv/bin/python benchmarks/batcher_loop.py --windows 40000 --repeats 3 --json loop.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, machine
from service.core.batch import InferInput
from service.core.batcher import Batcher

_OUT = np.zeros((256, 527), np.float32)
PATHS = ("task_per_submit", "enqueue")
CLOCKS = ("loop", "process", "wall")


def _infer(batch: InferInput) -> dict[str, np.ndarray]:
    return {"clipwise": _OUT[: len(batch)]}


async def _one_run(path: str, windows: int, concurrency: int, max_batch: int) -> dict[str, float]:
    """Microseconds per window for ``windows`` one-window requests: the loop thread's CPU, the
    process's (the engine thread's hand-off back included) and wall time."""
    batcher = Batcher(
        _infer, max_batch=max_batch, max_delay_s=0.002, max_queue=4 * concurrency, stack=False
    )
    batcher.start()
    window = np.zeros(320_000, np.float32)
    finished = asyncio.get_running_loop().create_future()
    counts = {"sent": 0, "done": 0}

    def answered(_: object) -> None:
        counts["done"] += 1
        if counts["sent"] < windows:
            send()
        elif counts["done"] == windows and not finished.done():
            finished.set_result(None)

    def send() -> None:
        counts["sent"] += 1
        deadline = time.monotonic() + 60
        if path == "enqueue":
            batcher.enqueue([window], deadline).add_done_callback(answered)
        else:
            asyncio.create_task(batcher.submit([window], deadline)).add_done_callback(answered)

    start = time.thread_time(), time.process_time(), time.perf_counter()
    for _ in range(min(concurrency, windows)):
        send()
    await finished
    end = time.thread_time(), time.process_time(), time.perf_counter()
    await batcher.stop()
    return {key: 1e6 * (b - a) / windows for key, a, b in zip(CLOCKS, start, end, strict=True)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=40_000, help="requests per run")
    p.add_argument("--concurrency", type=int, default=64, help="requests kept in flight")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="runs per path, alternating")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runs: dict[str, dict[str, list[float]]] = {c: {p: [] for p in PATHS} for c in CLOCKS}
    for _ in range(args.repeats):  # alternating, so a drifting machine drifts under both
        for path in PATHS:
            one = uvloop.run(_one_run(path, args.windows, args.concurrency, args.max_batch))
            for clock in CLOCKS:
                runs[clock][path].append(round(one[clock], 2))
    medians = {path: statistics.median(values) for path, values in runs["loop"].items()}
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["benchmarks/batcher_loop.py", *(argv or sys.argv[1:])]),
        "unit": "loop-thread CPU microseconds per window (one-window requests)",
        "process_cpu_median": {p: statistics.median(v) for p, v in runs["process"].items()},
        "wall_median": {p: statistics.median(v) for p, v in runs["wall"].items()},
        "max_batch": args.max_batch,
        "concurrency": args.concurrency,
        "runs": runs["loop"],
        "process_cpu_runs": runs["process"],
        "wall_runs": runs["wall"],
        "median": medians,
        "enqueue_vs_task": round(medians["enqueue"] / medians["task_per_submit"], 2),
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
