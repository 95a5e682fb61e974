"""How long this machine takes to wake a sleeping event loop from another thread.

A lone request crosses threads twice in the service (the event loop hands the batch to an
engine thread and is woken when it ends) and the network twice (the server's loop and the
client are woken by their sockets). On bare metal a wake-up costs microseconds; on a virtual
machine whose idle vCPU has halted it can cost a few hundred, and that lands in the lone
request's latency, not in the engine's batch-1 time it is compared with. This measures the
floor, side by side in one run: the event loop (uvloop, as the service runs it) waits for a
worker thread that answers at once, and one that answers after ``--busy-ms`` of work (the
loop sleeps meanwhile, as it does while the engine runs a batch).

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

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine


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
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
