"""The dynamic batcher on its own: a real (numpy) inference function, no HTTP.

Most tests step the engine by hand: a gated engine blocks each batch until the test allows it,
so which windows share a batch does not depend on timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from service.core.batcher import (
    Batcher,
    BatcherStopped,
    DeadlineExceeded,
    QueueFull,
    TooManyWindows,
    WindowResult,
)


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
        engine.allow(10)
        await busy

    run(main, engine, max_batch=1, max_delay_s=0, max_queue=10, observer=obs)
    # 2 of the 3 were still queued (one was stacked and waiting for the engine: it runs)
    assert obs.drops == [("deadline", 2), ("deadline", 2)]
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


class KeyedEngine(Engine):
    """Each batch waits for its own release (by its first window's value), so a test picks
    the order in which batches running at once finish; records how many ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[int, threading.Event] = {}
        self.running = self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        first = int(batch[0, 0])
        with self._lock:
            gate = self.gates.setdefault(first, threading.Event())
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            assert gate.wait(10), f"the test never released batch {first}"
            return super().__call__(batch)
        finally:
            with self._lock:
                self.running -= 1

    def release(self, first: int) -> None:
        with self._lock:
            self.gates.setdefault(first, threading.Event()).set()


def test_two_batches_in_flight_overlap_and_finish_in_any_order() -> None:
    engine, obs = KeyedEngine(), Observer()

    async def main(b: Batcher) -> None:
        first = asyncio.create_task(b.submit(windows(0, 2), far()))
        await until(lambda: engine.running == 1, "batch 1 running")
        second = asyncio.create_task(b.submit(windows(10, 2), far()))
        await until(lambda: engine.running == 2, "batch 2 running beside batch 1")
        third = asyncio.create_task(b.submit(windows(20, 2), far()))
        await until(lambda: len(obs.stacked) == 3, "batch 3 stacked, waiting for a thread")
        await asyncio.sleep(0.05)
        assert engine.running == 2 and b.depth == 0  # no third run while two are in flight
        engine.release(10)  # the second batch ends first
        assert values(await second) == [10, 11]
        assert not first.done()
        await until(lambda: engine.running == 2, "batch 3 took the free thread")
        engine.release(0)
        engine.release(20)
        assert values(await first) == [0, 1] and values(await third) == [20, 21]

    run(main, engine, max_batch=2, max_delay_s=0, max_queue=100, observer=obs, inflight=2)
    assert engine.most_at_once == 2 and len(engine.threads) == 2
    assert sorted(obs.done) == [2, 2, 2] and obs.drops == []


def test_in_flight_results_match_every_window() -> None:
    rng = np.random.default_rng(1)

    class Jittery(Engine):
        def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            time.sleep(float(rng.uniform(0, 0.004)))  # batches end out of order
            return super().__call__(batch)

    engine = Jittery()
    run(random_requests(rng), engine, max_batch=3, max_delay_s=0.001, max_queue=1000, inflight=2)
    assert len(engine.threads) == 2


def test_stop_with_timeout_fails_both_batches_in_flight() -> None:
    engine, obs = KeyedEngine(), Observer()

    async def main(b: Batcher) -> None:
        jobs = []
        for i in range(3):
            jobs.append(asyncio.create_task(b.submit(windows(10 * i, 2), far())))
            await until(lambda: len(obs.stacked) == len(jobs), "one batch per request")
        await until(lambda: engine.running == 2, "two batches running")
        await asyncio.wait_for(b.stop(timeout=0.05), 5)
        for job in jobs:
            with pytest.raises(BatcherStopped):
                await job

    try:
        run(
            main,
            engine,
            stop=False,
            max_batch=2,
            max_delay_s=0,
            max_queue=100,
            observer=obs,
            inflight=2,
        )
    finally:
        for first in (0, 10, 20):
            engine.release(first)


def test_inflight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="inflight must be at least 1"):
        Batcher(Engine(), max_batch=1, max_delay_s=0, max_queue=1, inflight=0)


def test_without_stacking_the_engine_gets_the_windows_themselves() -> None:
    """``stack=False`` (an engine that copies batches into its own staging buffer): no copy
    is made on the way; each batch is the list of its windows, in batch order."""
    seen: list[list[np.ndarray]] = []

    def engine(batch: Any) -> dict[str, np.ndarray]:
        assert isinstance(batch, list)
        seen.append(batch)
        return {"clipwise": np.stack([w[:1] * 2 for w in batch])}

    sent = windows(0, 3) + windows(10, 1)

    async def main(b: Batcher) -> None:
        first = asyncio.create_task(b.submit(sent[:3], far()))
        second = asyncio.create_task(b.submit(sent[3:], far()))
        assert values(await first) == [0, 1, 2] and values(await second) == [10]

    run(main, engine, max_batch=2, max_delay_s=0.01, max_queue=100, stack=False)
    assert sorted(id(w) for batch in seen for w in batch) == sorted(map(id, sent))
    assert max(map(len, seen)) == 2
