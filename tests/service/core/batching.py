"""Helpers shared by the batcher tests: a numpy engine (gated on request), an observer that
records what the batcher reports, windows that name themselves, and a scenario runner."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from service.core.batch import WindowResult
from service.core.batcher import Batcher


class Engine:
    """infer(): each window's first sample x 2; records each batch's first samples (as it
    starts) and its thread. Gated: every batch waits for a permit from ``allow``."""

    def __init__(self, gated: bool = False, fail_length: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.lengths: list[int] = []
        self.threads: set[int] = set()
        self.fail_length = fail_length
        self._permits = threading.Semaphore(0) if gated else None

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append([int(v) for v in batch[:, 0]])
        self.lengths.append(batch.shape[1])
        self.threads.add(threading.get_ident())
        if self._permits is not None:
            assert self._permits.acquire(timeout=10), "the test never let this batch run"
        if batch.shape[1] == self.fail_length:
            raise RuntimeError("engine failure")
        return {"clipwise": batch[:, :1] * 2}

    def allow(self, batches: int = 1) -> None:
        assert self._permits is not None
        for _ in range(batches):
            self._permits.release()


class Observer:
    def __init__(self) -> None:
        self.drops: list[tuple[str, int]] = []
        self.stacked: list[int] = []
        self.done: list[int] = []

    def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None:
        self.done.append(size)

    def depth_changed(self, depth: int) -> None: ...

    def dropped(self, reason: str, count: int) -> None:
        self.drops.append((reason, count))

    def batch_stacked(self, size: int, stack_s: float) -> None:
        self.stacked.append(size)


def windows(first: int, count: int, length: int = 8) -> list[np.ndarray]:
    """Windows whose first samples are first, first + 1, ... (they name the window)."""
    return [np.full(length, first + i, np.float32) for i in range(count)]


def values(results: list[WindowResult]) -> list[int]:
    return [int(r.outputs["clipwise"][0]) // 2 for r in results]


def far() -> float:
    return time.monotonic() + 60


async def until(ready: Callable[[], bool], what: str) -> None:
    for _ in range(5000):
        if ready():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


Scenario = Callable[[Batcher], Coroutine[Any, Any, None]]


def run(scenario: Scenario, engine: Callable[..., Any], stop: bool = True, **options: Any) -> None:
    """``scenario`` against ``Batcher(engine, **options)``, started on a fresh event loop (its
    tasks need a running one) and stopped after it, unless the scenario stops it itself."""

    async def main() -> None:
        b = Batcher(engine, **options)
        b.start()
        await scenario(b)
        if stop:
            await b.stop()

    asyncio.run(main())


async def occupy(b: Batcher, engine: Engine, count: int = 1) -> asyncio.Task[list[WindowResult]]:
    """Submits windows 0 .. count - 1; returns once the (gated) engine holds the first batch."""
    job = asyncio.create_task(b.submit(windows(0, count), far()))
    await until(lambda: len(engine.batches) == 1, "the engine busy")
    return job


def random_requests(rng: np.random.Generator) -> Scenario:
    """40 requests of 1 to 8 windows, 6 or 8 samples long: each gets its own results back."""

    async def scenario(b: Batcher) -> None:
        sizes = rng.integers(1, 9, size=40)
        lengths = rng.choice([6, 8], size=40)
        jobs = [
            b.submit(windows(1000 * i, int(n), int(n_len)), far())
            for i, (n, n_len) in enumerate(zip(sizes, lengths, strict=True))
        ]
        results = await asyncio.gather(*jobs)
        for i, (n, res) in enumerate(zip(sizes, results, strict=True)):
            assert values(res) == [1000 * i + k for k in range(n)]

    return scenario
