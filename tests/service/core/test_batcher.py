"""The dynamic batcher on its own: a real (numpy) inference function, no HTTP.

Most tests step the engine by hand: a gated engine blocks each batch until the test allows it,
so which windows share a batch does not depend on timing.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from service.core.batcher import Batcher
from service.core.errors import BatcherStopped, DeadlineExceeded, QueueFull, TooManyWindows
from tests.service.core.batching import (
    Engine,
    Observer,
    far,
    occupy,
    random_requests,
    run,
    until,
    values,
    windows,
)


def test_batches_fill_up_and_results_come_back_in_order() -> None:
    engine = Engine()

    async def main(b: Batcher) -> None:
        jobs = [b.submit(windows(100 * i, 2), far()) for i in range(5)]
        for i, res in enumerate(await asyncio.gather(*jobs)):
            assert values(res) == [100 * i, 100 * i + 1]
            assert all(r.batch_size <= 4 for r in res)

    run(main, engine, max_batch=4, max_delay_s=0.05, max_queue=100)
    assert sum(map(len, engine.batches)) == 10 and max(map(len, engine.batches)) == 4
    assert threading.get_ident() not in engine.threads  # never on the event loop's thread


def test_only_windows_of_the_same_length_share_a_batch() -> None:
    engine = Engine()

    async def main(b: Batcher) -> None:
        await asyncio.gather(
            b.submit(windows(0, 3, 8), far()),
            b.submit(windows(10, 2, 5), far()),
            b.submit(windows(20, 1, 8) + windows(30, 1, 5), far()),
        )

    run(main, engine, max_batch=8, max_delay_s=0.02, max_queue=100)
    assert sorted(zip(engine.lengths, map(len, engine.batches), strict=True)) == [(5, 3), (8, 4)]


def test_a_huge_request_does_not_starve_a_small_one_behind_it() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        huge = asyncio.create_task(b.submit(windows(0, 40), far()))
        await until(lambda: len(obs.stacked) == 2, "batch 1 running, batch 2 stacked")
        small = asyncio.create_task(b.submit(windows(1000, 2), far()))
        await until(lambda: b.depth == 34, "the small request queued")
        engine.allow(3)
        assert values(await small) == [1000, 1001]
        assert not huge.done()
        engine.allow(100)
        assert values(await huge) == list(range(40))

    run(main, engine, max_batch=4, max_delay_s=60, max_queue=100, observer=obs)
    # batch 3, the first cut after the small request came, takes turns between the two
    assert engine.batches[:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 1000, 9, 1001]]


def test_round_robin_rotation_spans_batches() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        first = await occupy(b, engine)
        jobs = [asyncio.create_task(b.submit(windows(100 * i, 2), far())) for i in (1, 2, 3)]
        await until(lambda: len(obs.stacked) == 2, "the second batch stacked")
        engine.allow(10)
        await asyncio.gather(first, *jobs)

    run(main, engine, max_batch=2, max_delay_s=60, max_queue=100, observer=obs)
    assert engine.batches == [[0], [100, 200], [300, 101], [201, 301]]


def test_a_request_larger_than_the_queue_is_refused_even_when_idle() -> None:
    async def main(b: Batcher) -> None:
        with pytest.raises(TooManyWindows, match="at most 10") as info:
            await b.submit(windows(0, 11), far())
        assert info.value.limit == 10 and info.value.windows == 11 and b.depth == 0
        assert len(await b.submit(windows(0, 10), far())) == 10  # exactly the limit fits

    run(main, Engine(), max_batch=4, max_delay_s=0, max_queue=10)


def test_queue_full_raises_with_retry_after() -> None:
    engine = Engine(gated=True)

    async def main(b: Batcher) -> None:
        first = asyncio.create_task(b.submit(windows(0, 4), far()))
        await until(lambda: b.depth == 2, "one window running, one stacked, two queued")
        with pytest.raises(QueueFull) as info:
            await b.submit(windows(10, 3), far())
        assert info.value.retry_after_s >= 1 and b.depth == 2
        second = asyncio.create_task(b.submit(windows(20, 2), far()))  # exactly fills it
        await until(lambda: b.depth == 4, "the second request queued")
        engine.allow(10)
        assert values(await second) == [20, 21] and values(await first) == [0, 1, 2, 3]

    run(main, engine, max_batch=1, max_delay_s=0, max_queue=4)


def test_submit_enforces_its_deadline_and_counts_it_as_deadline() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        busy = await occupy(b, engine)
        with pytest.raises(DeadlineExceeded):  # no asyncio.timeout around it
            await b.submit(windows(10, 3), time.monotonic() + 0.05)
        assert b.depth == 0
        with pytest.raises(DeadlineExceeded):
            await b.submit(windows(20, 2), time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded):  # not queued without a deadline to keep
            b.enqueue(windows(30, 2), math.nan)
        engine.allow(10)
        await busy

    run(main, engine, max_batch=1, max_delay_s=0, max_queue=10, observer=obs)
    # 2 of the 3 were still queued (one was stacked and waiting for the engine: it runs)
    assert obs.drops == [("deadline", 2), ("deadline", 2), ("deadline", 2)]
    assert engine.batches == [[0], [10]]


def test_cancelled_request_drops_its_queued_windows() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        busy = asyncio.create_task(b.submit(windows(0, 2), far()))
        await until(lambda: len(obs.stacked) == 2, "one window running, one stacked")
        doomed = asyncio.create_task(b.submit(windows(10, 5), far()))
        await until(lambda: b.depth == 5, "the doomed request queued")
        doomed.cancel()
        await until(lambda: b.depth == 0, "its windows dropped")
        engine.allow(10)
        await busy

    run(main, engine, max_batch=1, max_delay_s=0, max_queue=100, observer=obs)
    assert obs.drops == [("cancelled", 5)] and engine.batches == [[0], [1]]


def test_idle_engine_cuts_a_lone_request_at_once() -> None:
    async def main(b: Batcher) -> None:
        res = await asyncio.wait_for(b.submit(windows(0, 1), far()), 10)
        assert res[0].batch_size == 1

    # a batch that waited max_delay_s would never finish in time
    run(main, Engine(), max_batch=64, max_delay_s=3600, max_queue=100)


def test_while_busy_a_batch_forms_until_the_engine_is_idle() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        first = await occupy(b, engine)
        later = [asyncio.create_task(b.submit(windows(10 * i, 1), far())) for i in (1, 2, 3)]
        await until(lambda: b.depth == 3, "three lone requests queued")
        await asyncio.sleep(0.05)
        assert obs.stacked == [1]  # not cut: the engine is busy and the batch not full
        engine.allow(2)
        await asyncio.gather(first, *later)

    run(main, engine, max_batch=8, max_delay_s=3600, max_queue=100, observer=obs)
    assert engine.batches == [[0], [10, 20, 30]]


def test_max_delay_bounds_the_wait_while_the_engine_is_busy() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        first = await occupy(b, engine)
        second = asyncio.create_task(b.submit(windows(10, 1), far()))
        await until(lambda: obs.stacked == [1, 1], "cut after max_delay_s, engine still busy")
        engine.allow(2)
        await asyncio.gather(first, second)

    run(main, engine, max_batch=8, max_delay_s=0.02, max_queue=100, observer=obs)


def test_without_cut_when_idle_a_lone_window_waits_about_max_delay() -> None:
    async def main(b: Batcher) -> None:
        res = await b.submit(windows(0, 1), far())
        assert 0.04 <= res[0].queue_s < 5

    run(main, Engine(), max_batch=64, max_delay_s=0.05, max_queue=100, cut_when_idle=False)


def test_the_next_batch_is_stacked_while_the_engine_runs() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        job = asyncio.create_task(b.submit(windows(0, 8), far()))
        await until(lambda: len(obs.stacked) == 2, "batch 2 stacked during batch 1")
        await asyncio.sleep(0.05)
        assert len(engine.batches) == 1 and len(obs.stacked) == 2  # one batch waits, no more
        assert b.depth == 4
        engine.allow(4)
        assert values(await job) == list(range(8))

    run(main, engine, max_batch=2, max_delay_s=0, max_queue=100, observer=obs)


def test_without_pipeline_nothing_is_stacked_while_the_engine_runs() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        job = await occupy(b, engine, 4)
        await asyncio.sleep(0.05)
        assert obs.stacked == [2] and b.depth == 2
        engine.allow(2)
        assert values(await job) == list(range(4))

    run(main, engine, max_batch=2, max_delay_s=0, max_queue=100, observer=obs, pipeline=False)


def test_pipelined_results_match_every_window() -> None:
    rng = np.random.default_rng(0)
    run(random_requests(rng), Engine(), max_batch=3, max_delay_s=0.001, max_queue=1000)


def test_stop_drains_short_requests_first_then_refuses_new_work() -> None:
    engine, obs = Engine(gated=True), Observer()
    finished: list[str] = []

    async def main(b: Batcher) -> None:
        async def job(name: str, first: int, count: int) -> None:
            assert values(await b.submit(windows(first, count), far())) == list(
                range(first, first + count)
            )
            finished.append(name)

        long = asyncio.create_task(job("long", 0, 10))
        await until(lambda: len(obs.stacked) == 2, "long: one batch running, one stacked")
        others = [asyncio.create_task(job(n, f, c)) for n, f, c in (("b", 200, 3), ("a", 100, 1))]
        await until(lambda: b.depth == 10, "a and b queued")
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0)  # stop() has begun: no new work
        with pytest.raises(BatcherStopped):
            await b.submit(windows(300, 1), far())
        engine.allow(100)
        await stopping  # returns once every accepted window has run
        await asyncio.gather(long, *others)

    run(main, engine, stop=False, max_batch=2, max_delay_s=0, max_queue=100, observer=obs)
    assert finished == ["a", "b", "long"]
    # queued at stop: a 1 window, b 3, long 6 (2 of its 10 running or stacked)
    assert engine.batches[2:5] == [[100, 200], [201, 202], [4, 5]]
    assert sum(map(len, engine.batches)) == 14 and obs.drops == []


def test_stop_with_timeout_fails_what_is_left() -> None:
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        jobs = [asyncio.create_task(b.submit(windows(10 * i, 3), far())) for i in range(3)]
        await until(lambda: len(obs.stacked) == 2, "one batch running, one stacked")
        await asyncio.wait_for(b.stop(timeout=0.05), 5)  # the engine never finished a batch
        for job in jobs:
            with pytest.raises(BatcherStopped):
                await job
        assert b.depth == 0

    try:
        run(main, engine, stop=False, max_batch=2, max_delay_s=0, max_queue=100, observer=obs)
    finally:
        engine.allow(10)  # let the engine thread finish
    # 4 of the 9 windows were cut (running or stacked), 5 still queued
    assert {r for r, _ in obs.drops} == {"stopped"} and sum(n for _, n in obs.drops) == 5


def test_an_inference_error_fails_only_that_batch() -> None:
    engine, obs = Engine(fail_length=3), Observer()

    async def main(b: Batcher) -> None:
        failing, fine = await asyncio.gather(
            b.submit(windows(0, 1, 3), far()),
            b.submit(windows(10, 1, 4), far()),
            return_exceptions=True,
        )
        assert isinstance(failing, RuntimeError) and "engine failure" in str(failing)
        assert isinstance(fine, list) and values(fine) == [10]
        assert values(await b.submit(windows(20, 1, 4), far())) == [20]

    run(main, engine, max_batch=4, max_delay_s=0.01, max_queue=100, observer=obs)


def test_an_inference_error_drops_the_rest_of_the_request() -> None:
    engine, obs = Engine(gated=True, fail_length=3), Observer()

    async def main(b: Batcher) -> None:
        job = asyncio.create_task(b.submit(windows(0, 5, 3), far()))
        await until(lambda: len(obs.stacked) == 2, "one running, one stacked")
        engine.allow(10)
        with pytest.raises(RuntimeError, match="engine failure"):
            await job

    run(main, engine, max_batch=1, max_delay_s=0, max_queue=100, observer=obs)
    assert obs.drops == [("failed", 3)]


def test_enqueue_returns_the_future_cancel_and_deadline_drop_its_windows() -> None:
    """The engine process's way in: a future per request, no task; cancelling the future or
    passing its deadline drops the windows still queued, counted by why."""
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        busy = await occupy(b, engine)
        kept = b.enqueue(windows(10, 2), math.inf)  # no deadline: never expires
        doomed = b.enqueue(windows(20, 3), far())
        late = b.enqueue(windows(30, 4), time.monotonic() + 0.05)
        assert b.depth == 9
        doomed.cancel()
        with pytest.raises(DeadlineExceeded):
            await late
        # the cancelled and the late windows left the queue; kept's first waits, stacked
        assert b.depth == 1
        engine.allow(10)
        assert values(await kept) == [10, 11] and values(await busy) == [0]

    run(main, engine, max_batch=1, max_delay_s=0, max_queue=100, observer=obs)
    assert sorted(obs.drops) == [("cancelled", 3), ("deadline", 4)]


def test_a_request_cancelled_in_the_turn_it_was_queued_never_runs() -> None:
    """The engine may read a submit and its cancel in one go: the windows are queued and
    their future cancelled before the batcher runs, and none of them reaches the engine."""
    engine, obs = Engine(), Observer()

    async def main(b: Batcher) -> None:
        doomed = b.enqueue(windows(0, 6), far())
        doomed.cancel()
        kept = b.enqueue(windows(10, 1), far())
        assert values(await kept) == [10]

    run(main, engine, max_batch=4, max_delay_s=0, max_queue=100, observer=obs)
    assert engine.batches == [[10]]
    assert sum(n for reason, n in obs.drops if reason == "cancelled") == 6
