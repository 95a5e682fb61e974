"""The batcher's engine threads: jobs, their optional ``prepare`` step, outcomes on the loop."""

from __future__ import annotations

import asyncio
import threading
import time

from service.core.engine_threads import EngineThreads

Outcome = tuple[str, object, float, float, str]  # tag, outcome, start, end, thread of ``done``


def _double(arg: int) -> int:
    return 2 * arg


async def _run_jobs(jobs: list[tuple[str, int]], prepare: bool) -> tuple[list[Outcome], float]:
    """Run ``(tag, arg)`` jobs in one engine thread (``fn`` doubles its argument; ``prepare``,
    if used, adds one, or raises for a negative one): their outcomes in order, and when the
    last ``prepare`` ended."""
    outcomes: list[Outcome] = []
    all_done = asyncio.Event()
    prepared = [0.0]

    def done(tag: str, outcome: object, start: float, end: float) -> None:
        outcomes.append((tag, outcome, start, end, threading.current_thread().name))
        if len(outcomes) == len(jobs):
            all_done.set()

    def add_one(arg: int) -> int:
        if arg < 0:
            raise MemoryError("no room to prepare")
        prepared[0] = time.monotonic()
        return arg + 1

    threads: EngineThreads[str, int, int] = EngineThreads(1, "unit", done)
    threads.start(asyncio.get_running_loop())
    for tag, arg in jobs:
        threads.submit(tag, _double, arg, add_one if prepare else None)
    await asyncio.wait_for(all_done.wait(), 10)
    threads.stop(join=True)
    return outcomes, prepared[0]


def test_prepare_runs_first_and_the_run_is_timed_from_its_end() -> None:
    [(tag, outcome, start, end, thread)], prepared_at = asyncio.run(
        _run_jobs([("a", 20)], prepare=True)
    )
    assert (tag, outcome, thread) == ("a", 42, "MainThread")  # fn(prepare(20)), on the loop
    assert start >= prepared_at > 0  # the run's start is taken once prepare has ended
    assert end >= start


def test_a_job_without_prepare_gets_its_argument_as_is() -> None:
    [(tag, outcome, *_)], _ = asyncio.run(_run_jobs([("b", 20)], prepare=False))
    assert (tag, outcome) == ("b", 40)


def test_a_failing_prepare_fails_its_job_and_the_thread_goes_on() -> None:
    (bad, good), _ = asyncio.run(_run_jobs([("bad", -5), ("good", 1)], prepare=True))
    assert bad[0] == "bad" and isinstance(bad[1], MemoryError)
    assert good[:2] == ("good", 4)
