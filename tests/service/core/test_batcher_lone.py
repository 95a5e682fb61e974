"""The batcher's ``lone_inline`` (the engine process): which lone windows run on the event
loop's own thread, and that everything else still goes to the engine threads."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.core.batcher import LONE_INLINE_MAX_S, Batcher
from tests.service.core.batching import Engine, Observer, far, run, until, values, windows


def test_lone_inline_runs_a_lone_window_on_the_loop_and_the_rest_in_engine_threads() -> None:
    """``lone_inline`` (the engine process): a lone window with nothing in flight runs on the
    loop's thread once a lone run has shown it is short; a batch of several, or one that
    comes while another runs, goes to an engine thread; every request gets its own results,
    and a failure fails only its own."""
    engine, obs = Engine(gated=True, fail_length=6), Observer()
    loop_thread: list[int] = []

    async def main(b: Batcher) -> None:
        loop_thread.append(threading.get_ident())
        engine.allow(2)
        assert values(await b.submit(windows(5, 1), far())) == [5]  # how long? a thread
        assert loop_thread[0] not in engine.threads
        assert values(await b.submit(windows(10, 1), far())) == [10]  # short: the loop
        assert loop_thread[0] in engine.threads
        busy = asyncio.create_task(b.submit(windows(0, 2), far()))  # to an engine thread
        await until(lambda: len(engine.batches) == 3, "the pair running")
        lone = asyncio.create_task(b.submit(windows(20, 1), far()))  # comes while it runs
        await asyncio.sleep(0.01)
        assert not lone.done()  # not run on the loop: it waits for an engine thread
        engine.allow(2)
        assert values(await busy) == [0, 1] and values(await lone) == [20]
        assert len(engine.threads) == 2  # the loop's and one engine thread
        engine.allow(1)
        with pytest.raises(RuntimeError, match="engine failure"):
            await b.submit(windows(30, 1, length=6), far())  # fails on the loop, alone
        engine.allow(1)
        assert values(await b.submit(windows(40, 1), far())) == [40]
        assert obs.done == [1, 1, 2, 1, 1]

    run(main, engine, max_batch=4, max_delay_s=1.0, max_queue=64, observer=obs, lone_inline=True)


def test_without_lone_inline_every_batch_runs_in_an_engine_thread() -> None:
    engine = Engine()
    loop_thread: list[int] = []

    async def main(b: Batcher) -> None:
        loop_thread.append(threading.get_ident())
        assert values(await b.submit(windows(10, 1), far())) == [10]
        assert loop_thread[0] not in engine.threads

    run(main, engine, max_batch=4, max_delay_s=1.0, max_queue=64)


def test_lone_inline_never_runs_queued_windows_on_the_loop() -> None:
    """One window per batch and a request of many: every batch has one window, but the rest
    are queued, so each runs in an engine thread and the loop keeps turning between them
    (run back to back on the loop, they would starve it: no answer, no signal until the
    whole queue had run)."""
    engine = Engine()
    loop_thread: list[int] = []
    turns = 0
    on_loop: list[int] = []  # windows run on the loop's thread

    def infer(batch: np.ndarray) -> dict[str, np.ndarray]:
        if threading.get_ident() == loop_thread[0]:
            on_loop.extend(int(v) for v in batch[:, 0])
        return engine(batch)

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def main(b: Batcher) -> None:
        loop_thread.append(threading.get_ident())
        ticker = asyncio.create_task(count_turns())
        assert values(await b.submit(windows(0, 40), far())) == list(range(40))
        ticker.cancel()
        # only the last window may find the queue empty and the engine idle
        assert on_loop in ([], [39])
        assert turns >= 40

    run(main, infer, max_batch=1, max_delay_s=1.0, max_queue=64, lone_inline=True)


def test_lone_inline_keeps_long_lone_runs_in_an_engine_thread() -> None:
    """A model whose batch of one takes longer than ``LONE_INLINE_MAX_S`` never runs on the
    loop: it would stand still (no submits read, no answers sent) for the whole run."""
    engine = Engine()
    loop_thread: list[int] = []

    def slow(batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(2 * LONE_INLINE_MAX_S)
        return engine(batch)

    async def main(b: Batcher) -> None:
        loop_thread.append(threading.get_ident())
        for i in range(3):
            assert values(await b.submit(windows(i, 1), far())) == [i]
        assert loop_thread[0] not in engine.threads

    run(main, slow, max_batch=4, max_delay_s=1.0, max_queue=64, lone_inline=True)


def test_lone_inline_runs_after_what_the_last_batch_queued_on_the_loop() -> None:
    """A lone window cut as a batch ends runs on the loop only after the callbacks that the
    batch's results queued there (the engine server's answers leave in a write queued with
    ``call_soon``): run at once, it would hold those answers back for the whole run."""
    engine = Engine(gated=True)
    loop_thread: list[int] = []
    events: list[str] = []

    def infer(batch: np.ndarray) -> dict[str, np.ndarray]:
        if threading.get_ident() == loop_thread[0]:
            events.append("lone run")
        return engine(batch)

    async def main(b: Batcher) -> None:
        loop = asyncio.get_running_loop()
        loop_thread.append(threading.get_ident())
        engine.allow(1)
        await b.submit(windows(0, 1), far())  # in a thread: lone runs are now known short
        pair = b.enqueue(windows(10, 2), far())
        pair.add_done_callback(lambda _: loop.call_soon(events.append, "answer written"))
        await until(lambda: len(engine.batches) == 2, "the pair running")
        lone = b.enqueue(windows(20, 1), far())  # lone once the pair ends
        engine.allow(2)
        assert values(await pair) == [10, 11] and values(await lone) == [20]
        assert events == ["answer written", "lone run"]

    run(main, infer, max_batch=4, max_delay_s=1.0, max_queue=64, lone_inline=True)
