"""The batcher's engine threads: each runs the jobs it is handed and posts every outcome back to
the event loop with one ``call_soon_threadsafe``.

A lean ``run_in_executor``: per job, no executor work item, no concurrent future, no asyncio
future wrapping it and no loop step to resume a task. With a front per core, one engine's
loop may take thousands of batches a second, and each step saved is CPU the fronts get back.
Knows nothing of batches: a job is a tag (handed back as is), a function and its argument, and
optionally a step that prepares the argument first, outside the job's timed run.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")  # what the caller tags a job with
A = TypeVar("A")  # the job's argument
R = TypeVar("R")  # the job's result

# done(tag, result or the exception it raised, start, end), called on the event loop; start is
# when ``fn`` began (after ``prepare``)
DoneFn = Callable[[T, R | BaseException, float, float], None]
Job = tuple[T, Callable[[A], R], A, Callable[[A], A] | None]


class EngineThreads(Generic[T, A, R]):
    def __init__(self, count: int, name: str, done: DoneFn[T, R]) -> None:
        self.count, self.name, self.done = count, name, done
        self._jobs: queue.SimpleQueue[Job[T, A, R] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._threads = [
            threading.Thread(target=self._work, args=(loop,), name=f"{self.name}-{i}", daemon=True)
            for i in range(self.count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, tag: T, fn: Callable[[A], R], arg: A, prepare: Callable[[A], A] | None = None
    ) -> None:
        """Run ``fn(arg)`` in the first free thread (``fn(prepare(arg))`` with ``prepare``,
        whose exception fails the job too); ``done`` gets its outcome on the loop."""
        self._jobs.put((tag, fn, arg, prepare))

    def stop(self, join: bool) -> None:
        """Drop the jobs no thread has taken yet and end the threads; ``join``: wait for them
        (only when none is running a job: the event loop must not wait for one)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._jobs.get_nowait()
        for _ in self._threads:
            self._jobs.put(None)
        if join:
            for thread in self._threads:
                thread.join()

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        while (job := self._jobs.get()) is not None:
            tag, fn, arg, prepare = job
            start = time.monotonic()
            try:
                if prepare is not None:
                    arg = prepare(arg)
                    start = time.monotonic()
                outcome: R | BaseException = fn(arg)
            except BaseException as exc:  # whatever it is, it fails this job, not the thread
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for it
                loop.call_soon_threadsafe(self.done, tag, outcome, start, time.monotonic())
            # an idle thread must not keep its last job alive (a batch holds waveforms)
            del job, tag, arg, prepare, outcome
