"""How long this machine takes to wake a sleeping event loop from another thread.

A lone request crosses threads twice in the service (the event loop hands the batch to an
engine thread and is woken when it ends) and the network twice (the server's loop and the
client are woken by their sockets). On bare metal a wake-up costs microseconds; on a virtual
machine whose idle vCPU has halted it can cost a few hundred, and that lands in the lone
request's latency, not in the engine's batch-1 time it is compared with. This measures the
floor, side by side in one run: the event loop (uvloop, as the service runs it) waits for a
worker thread that answers at once, and one that answers after ``--busy-ms`` of work (the
loop sleeps meanwhile, as it does while the engine runs a batch). It also times a fixed
millisecond of a request's CPU work back to back and after ``--gap-ms`` of idle: on a VM the
work itself can run slower after an idle gap, which a lone request pays too.

    .venv/bin/python benchmarks/wakeup.py --rounds 200 --busy-ms 50 --json wakeup.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, machine


def _worker(calls: queue.SimpleQueue[tuple[asyncio.Future[float], float] | None]) -> None:
    """Work for ``busy`` seconds (spinning, as an engine run keeps a core), then wake the loop
    with the moment it was asked to."""
    while (call := calls.get()) is not None:
        future, busy = call
        until = time.perf_counter() + busy
        while time.perf_counter() < until:
            pass
        loop = future.get_loop()
        loop.call_soon_threadsafe(future.set_result, time.perf_counter())


async def _wakes(rounds: int, busy_s: float, gap_s: float) -> list[float]:
    """Microseconds from the worker's ``call_soon_threadsafe`` to the loop running again."""
    calls: queue.SimpleQueue[tuple[asyncio.Future[float], float] | None] = queue.SimpleQueue()
    thread = threading.Thread(target=_worker, args=(calls,), daemon=True)
    thread.start()
    loop, out = asyncio.get_running_loop(), []
    for _ in range(rounds):
        future: asyncio.Future[float] = loop.create_future()
        calls.put((future, busy_s))
        sent = await future
        out.append(1e6 * (time.perf_counter() - sent))
        await asyncio.sleep(gap_s)
    calls.put(None)
    thread.join()
    return out


def _work(floats: np.ndarray, scores: dict[str, list[Any]]) -> float:
    """Seconds of a fixed piece of a request's CPU work (JSON of 527 scores, numpy over a
    10 s window), about a millisecond."""
    start = time.perf_counter()
    for _ in range(3):
        json.dumps(scores)
        float((floats * 0.5).sum())
    return time.perf_counter() - start


def _cold_work(rounds: int, gap_s: float) -> tuple[list[float], list[float]]:
    """Microseconds of the same work back to back, and each after ``gap_s`` idle: on a VM
    whose vCPU was idle the first millisecond of work can run slower (caches, the host), a
    cost a lone request pays and a saturated service does not."""
    floats = np.linspace(-1, 1, 320_000, dtype=np.float32)
    scores: dict[str, list[Any]] = {
        "scores": [i / 527 for i in range(527)],
        "labels": [f"label {i}" for i in range(527)],
    }
    hot = [1e6 * _work(floats, scores) for _ in range(rounds)]
    cold = []
    for _ in range(rounds):
        time.sleep(gap_s)
        cold.append(1e6 * _work(floats, scores))
    return hot, cold


def _summary(micros: list[float]) -> dict[str, float]:
    ordered = sorted(micros)
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p90_us": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "max_us": round(ordered[-1], 1),
    }


def _cpuidle_driver() -> str | None:
    """The kernel's idle driver (``haltpoll`` on a KVM guest: it polls a while, then halts)."""
    path = Path("/sys/devices/system/cpu/cpuidle/current_driver")
    return path.read_text().strip() if path.exists() else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=200, help="wake-ups per setting")
    p.add_argument("--busy-ms", type=float, default=50.0, help="the worker's work per round")
    p.add_argument("--gap-ms", type=float, default=20.0, help="idle time between rounds")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "machine": {**machine(), "cpuidle": _cpuidle_driver()},
        "command": " ".join(sys.argv),
        "rounds": args.rounds,
        "answer_at_once": _summary(uvloop.run(_wakes(args.rounds, 0.0, 0.0))),
        f"answer_after_{args.busy_ms:g}_ms": _summary(
            uvloop.run(_wakes(args.rounds, args.busy_ms / 1000, args.gap_ms / 1000))
        ),
    }
    hot, cold = _cold_work(args.rounds, args.gap_ms / 1000)
    result["work_back_to_back"], result["work_after_gap"] = _summary(hot), _summary(cold)
    result["work_after_gap_vs_back_to_back"] = round(
        statistics.median(cold) / statistics.median(hot), 2
    )
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
