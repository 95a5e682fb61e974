"""The engine process's ceiling: how many windows per second one engine takes from its fronts.

    python benchmarks/engine_ceiling.py [--batch 16,64] [--procs 1] [--inflight 48] [--json f]

With ``PANNS_WORKERS`` > 1 every window of every front passes through one engine process per
device: its event loop reads each submit, the batcher cuts and stacks, the model runs, and
the loop answers. On a GPU host with a front per core, that one loop (not the device) may be
what limits the service, so this measures it alone, without HTTP or decoding:

* the real engine (``python -m service.supervisor engine``, uvloop, the batcher, ORT) serving
  the near-free bundle (``benchmarks/nearfree.py``; ``--bundle`` for another), with
  prometheus-client in multiprocess mode as under the supervisor;
* ``--procs`` client processes standing in for fronts: each the real ``EngineClient`` with its
  shared-memory arena, a few 10 s windows placed there once, and ``--inflight`` one-window
  submits kept on their way.

Prints JSON per ``--batch`` (``PANNS_MAX_BATCH``): windows/s; the engine's CPU ms per window
and cores busy (from /proc); the same for its event loop alone (the main thread: one core at
most, so ``loop_ceiling_windows_per_s`` bounds what one engine process takes, whatever the
device); the clients' CPU ms per window; the mean batch size the engine ran; and the engine
thread's wall time per window (``run_ms_per_window``: the model's run with the thread
hand-off and any wait for the GIL, what a GPU would not take off the CPU entirely).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    TreeUsage,
    machine,
    machine_busy,
    main_thread_cpu_s,
    save_json,
    tree_usage,
)
from benchmarks.nearfree import build_nearfree_bundle  # noqa: E402
from service.supervisor import ENV_SOCKET  # noqa: E402

CLIP_S = 10.0
CLIPS = 4  # distinct windows each client places in its arena once


class Plan(NamedTuple):
    """When the load starts and the measured window opens and closes (monotonic seconds,
    one clock for every process on Linux)."""

    start: float
    open: float
    close: float


class Clients:
    """The client processes: each connects (waiting for the engine's models) and places its
    windows, says so, then waits for the plan, so loading time is never measured. Daemons,
    each reporting its failure instead of dying silently: a broken run fails fast and leaves
    nothing behind."""

    def __init__(self, path: str, model: str, samples: int, args: argparse.Namespace) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.out, self.go = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.times = ctx.Array("d", 3)
        self.timeout_s = args.ready_timeout_s
        self.procs = [
            ctx.Process(
                target=client_main,
                args=(path, model, samples, args.inflight, self),
                daemon=True,
            )
            for _ in range(args.procs)
        ]

    def __getstate__(self) -> dict[str, Any]:  # what a spawned client gets: not the processes
        return {k: v for k, v in self.__dict__.items() if k != "procs"}

    def start(self, engine: subprocess.Popen[bytes], warmup_s: float, duration_s: float) -> Plan:
        for proc in self.procs:
            proc.start()
        ends = time.monotonic() + self.timeout_s
        for _ in self.procs:
            while True:
                if engine.poll() is not None:
                    raise RuntimeError(f"the engine exited with {engine.returncode}")
                if time.monotonic() > ends:
                    raise TimeoutError(f"the clients were not ready in {self.timeout_s:g} s")
                try:
                    _raise_failure(self.ready.get(timeout=1.0))
                    break
                except queue.Empty:
                    continue
        start = time.monotonic() + 0.2
        self.times[:] = [start, start + warmup_s, start + warmup_s + duration_s]
        self.go.set()
        return Plan(*self.times[:])

    def plan(self) -> Plan:
        if not self.go.wait(self.timeout_s):
            raise TimeoutError("no plan came: the benchmark gave up")
        return Plan(*self.times[:])

    def results(self, timeout_s: float) -> list[dict[str, Any]]:
        results = [_raise_failure(self.out.get(timeout=timeout_s)) for _ in self.procs]
        for proc in self.procs:
            proc.join(10)
        return results


def _raise_failure(message: Any) -> Any:
    if isinstance(message, dict) and "failed" in message:
        raise RuntimeError(f"a client failed: {message['failed']}")
    return message


async def _client(
    path: str, model: str, samples: int, inflight: int, clients: Clients
) -> dict[str, Any]:
    from service.core.remote import EngineClient

    client = EngineClient(path)
    await client.connect(timeout_s=clients.timeout_s)
    assert client.arena is not None, "the benchmark needs the shared-memory arena (Linux)"
    rng = np.random.default_rng(os.getpid())
    windows = []
    for _ in range(CLIPS):
        wave = client.waveform(samples)
        wave[:] = 0.1 * rng.standard_normal(samples, dtype=np.float32)
        windows.append(wave)
    clients.ready.put(os.getpid())
    plan = await asyncio.to_thread(clients.plan)
    done, batches, computes, cpu = 0, [], [], {}
    await asyncio.sleep(max(0.0, plan.start - time.monotonic()))

    async def pump(index: int) -> None:
        nonlocal done
        while (now := time.monotonic()) < plan.close:
            result = (await client.submit(model, [windows[index % CLIPS]], now + 60.0))[0]
            if plan.open <= time.monotonic() < plan.close:
                done += 1
                batches.append((result.batch_id, result.batch_size))
                computes.append(result.compute_s / result.batch_size)

    async def mark(edge: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        cpu[edge] = time.process_time()

    await asyncio.gather(
        *(pump(i) for i in range(inflight)), mark("open", plan.open), mark("close", plan.close)
    )
    await client.close()
    return {
        "done": done,
        "batch_sizes": batches,
        "compute_s": computes,
        "cpu_s": cpu["close"] - cpu["open"],
    }


def client_main(path: str, model: str, samples: int, inflight: int, clients: Clients) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            clients.out.put(runner.run(_client(path, model, samples, inflight, clients)))
    except Exception as exc:  # told to the parent, which is waiting on one of these queues
        failure = {"failed": f"{type(exc).__name__}: {exc}"}
        clients.ready.put(failure)
        clients.out.put(failure)


def start_engine(
    bundle: Path, batch: int, tmp: Path, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    metrics = tmp / f"metrics-{batch}"
    metrics.mkdir()
    env = {
        **os.environ,
        **dict(kv.split("=", 1) for kv in args.engine_env),
        "PANNS_MODELS": str(bundle),
        "PANNS_MAX_BATCH": str(batch),
        "PANNS_MAX_QUEUE": str(max(512, 4 * args.procs * args.inflight)),
        "PANNS_THREADS": str(args.threads),
        "PANNS_LOG_LEVEL": "warning",
        ENV_SOCKET: str(tmp / f"engine-{batch}.sock"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service.supervisor", "engine"], cwd=REPO, env=env
    )


def run_batch(bundle: Path, model: str, rate: int, batch: int, args: argparse.Namespace) -> dict:
    """One engine with ``PANNS_MAX_BATCH=batch``, loaded by the clients; its figures."""
    with tempfile.TemporaryDirectory(prefix="engine-ceiling-") as name:
        tmp = Path(name)
        engine = start_engine(bundle, batch, tmp, args)
        try:
            return _load(engine, str(tmp / f"engine-{batch}.sock"), model, rate, args)
        finally:
            engine.terminate()  # an engine still loading acts on it only once loaded
            try:
                engine.wait(30)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()


def _sample(pid: int) -> tuple[TreeUsage, tuple[int, int], float]:
    """The engine's CPU (all threads), the machine's busy jiffies, the engine loop's CPU."""
    return tree_usage(pid), machine_busy(), main_thread_cpu_s(pid)


def _load(
    engine: subprocess.Popen[bytes], path: str, model: str, rate: int, args: argparse.Namespace
) -> dict:
    launched = time.monotonic()  # just after the engine's launch
    clients = Clients(path, model, int(CLIP_S * rate), args)
    plan = clients.start(engine, args.warmup_s, args.duration_s)
    time.sleep(max(0.0, plan.open - time.monotonic()))
    start, busy_start, loop_start = _sample(engine.pid)
    time.sleep(max(0.0, plan.close - time.monotonic()))
    end, busy_end, loop_end = _sample(engine.pid)
    results = clients.results(timeout_s=120)
    done = sum(r["done"] for r in results)
    engine_cpu, loop_cpu = end.cpu_s - start.cpu_s, loop_end - loop_start
    busy = [e - s for s, e in zip(busy_start, busy_end, strict=True)]
    sizes = {bid: size for r in results for bid, size in r["batch_sizes"]}  # one per batch
    computes = [c for r in results for c in r["compute_s"]]
    return {
        "windows_per_s": round(done / args.duration_s, 1),
        # loading and warming up, until every client had connected
        "engine_ready_s": round(plan.start - launched, 1),
        "engine_cpu_ms_per_window": round(1000 * engine_cpu / done, 3) if done else None,
        "engine_cores_busy": round(engine_cpu / args.duration_s, 2),
        # the event loop is one thread: its CPU per window bounds the engine's windows/s
        "loop_cpu_ms_per_window": round(1000 * loop_cpu / done, 3) if done else None,
        "loop_busy_pct": round(100 * loop_cpu / args.duration_s, 1),
        "loop_ceiling_windows_per_s": round(done / loop_cpu) if loop_cpu else None,
        "client_cpu_ms_per_window": round(1000 * sum(r["cpu_s"] for r in results) / done, 3)
        if done
        else None,
        "mean_batch": round(statistics.fmean(sizes.values()), 2) if sizes else None,
        "run_ms_per_window": round(1000 * statistics.median(computes), 3) if computes else None,
        "machine_busy_pct": round(100 * busy[0] / busy[1], 1) if busy[1] else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="serve this bundle (default: near-free)")
    parser.add_argument(
        "--batch", default="16,64", help="PANNS_MAX_BATCH settings, comma-separated"
    )
    parser.add_argument("--procs", type=int, default=1, help="client processes (fronts)")
    parser.add_argument("--inflight", type=int, default=48, help="submits on their way per client")
    parser.add_argument("--threads", type=int, default=1, help="PANNS_THREADS of the engine")
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument(
        "--ready-timeout-s", type=float, default=300.0, help="for the engine to load"
    )
    parser.add_argument(
        "--engine-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for the engine (repeatable), e.g. PANNS_DEVICE=cuda",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON here (after each batch)")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # the engine is stopped and the files go (the finally blocks)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # a bounded run (the GPU check) ends us so
    with tempfile.TemporaryDirectory(prefix="nearfree-") as tmp:
        bundle = args.bundle or build_nearfree_bundle(Path(tmp) / "nearfree", clip_s=CLIP_S)
        card = json.loads((bundle / "model.json").read_text())
        model, rate = card["name"], int(card["sample_rate"])
        result: dict[str, Any] = {
            "machine": machine(),
            "command": " ".join(["benchmarks/engine_ceiling.py", *(argv or sys.argv[1:])]),
            "model": model,
            "procs": args.procs,
            "inflight_per_proc": args.inflight,
            "by_max_batch": {},
        }
        for batch in args.batch.split(","):
            result["by_max_batch"][batch] = run_batch(bundle, model, rate, int(batch), args)
            save_json(args.json, result)  # what is measured so far survives a run cut short
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
