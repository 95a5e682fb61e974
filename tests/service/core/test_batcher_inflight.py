"""The batcher's in-flight batches (two at once, finishing in any order) and unstacked hand-off."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from service.core.batcher import Batcher
from service.core.errors import BatcherStopped
from tests.service.core.batching import (
    Engine,
    Observer,
    far,
    random_requests,
    run,
    until,
    values,
    windows,
)


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


def _engine_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"infer-{name}-")]


def test_stop_ends_the_engine_threads() -> None:
    """The batcher's own engine threads end with ``stop()``: none is left behind."""

    async def main(b: Batcher) -> None:
        assert len(_engine_threads("ends")) == 2
        assert values(await b.submit(windows(0, 3), far())) == [0, 1, 2]

    run(main, Engine(), name="ends", max_batch=2, max_delay_s=0, max_queue=10, inflight=2)
    assert _engine_threads("ends") == []


def test_a_batch_still_waiting_for_the_engine_at_stop_timeout_never_runs() -> None:
    """``stop(timeout)`` fails the requests of the batch stacked behind the running one and
    drops that batch: the engine does not run it for nobody once released. The running batch,
    ending after ``stop`` gave up on it (the loop still running, as in the app's lifespan),
    is not reported to the observer (metrics) as a batch served."""
    engine, obs = Engine(gated=True), Observer()

    async def main(b: Batcher) -> None:
        jobs = [asyncio.create_task(b.submit(windows(10 * i, 1), far())) for i in range(2)]
        await until(lambda: len(obs.stacked) == 2, "one batch running, one stacked")
        await until(lambda: len(engine.batches) == 1, "the engine holds the first batch")
        threads = _engine_threads("waiting")
        await asyncio.wait_for(b.stop(timeout=0.05), 5)
        for job in jobs:
            with pytest.raises(BatcherStopped):
                await job
        engine.allow(10)  # the running batch ends; nothing else may start

        def join() -> None:
            for thread in threads:
                thread.join(5)
                assert not thread.is_alive()

        # the thread posted its outcome before it ended: that callback has run by the time
        # this task resumes (callbacks run in the order they were posted)
        await asyncio.to_thread(join)

    try:
        options: dict[str, Any] = {"max_batch": 1, "max_delay_s": 0, "max_queue": 10}
        run(main, engine, stop=False, name="waiting", observer=obs, **options)
    finally:
        engine.allow(10)
    assert engine.batches == [[0]]
    assert obs.done == []


class Raising(Engine):
    """Raises ``error`` on the first batch, then behaves."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error: BaseException | None = error

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return super().__call__(batch)


@pytest.mark.parametrize("error", [asyncio.CancelledError(), SystemExit(3), KeyboardInterrupt()])
def test_an_infer_raising_a_base_exception_fails_its_batch_only(error: BaseException) -> None:
    """Not an ``Exception``: it still fails only its batch's requests (as an error, not as
    their own cancellation), and the engine thread, the next request and ``stop`` go on."""

    async def main(b: Batcher) -> None:
        with pytest.raises(RuntimeError, match="inference failed"):
            await b.submit(windows(0, 1), far())
        assert values(await b.submit(windows(5, 1), far())) == [5]

    run(main, Raising(error), max_batch=1, max_delay_s=0, max_queue=10)


class FailingObserver(Observer):
    def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None:
        raise RuntimeError("observer failure")


def test_a_failure_handing_out_results_does_not_wedge_the_batcher() -> None:
    """An observer (metrics) that raises, or an engine that returns too few rows (the windows
    left without a row fail): the forming task still learns that the engine is free, so the
    next batch runs and ``stop`` returns."""
    short = Engine()

    def too_few_rows(batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"clipwise": short(batch)["clipwise"][:1]}

    async def main(b: Batcher) -> None:
        # reported after the results went out: the request has them; the engine is free
        assert values(await b.submit(windows(0, 1), far())) == [0]
        assert values(await b.submit(windows(1, 1), far())) == [1]
        await asyncio.wait_for(b.stop(), 5)

    run(
        main,
        Engine(),
        stop=False,
        max_batch=1,
        max_delay_s=0,
        max_queue=10,
        observer=FailingObserver(),
    )

    async def rows(b: Batcher) -> None:
        first, second = await asyncio.gather(
            b.submit(windows(0, 1), far()), b.submit(windows(1, 1), far()), return_exceptions=True
        )
        assert values(first) == [0]  # type: ignore[arg-type]
        assert isinstance(second, IndexError)
        await asyncio.wait_for(b.stop(), 5)

    run(rows, too_few_rows, stop=False, max_batch=2, max_delay_s=0.05, max_queue=10)


class ThreadObserver(Observer):
    """Records which thread reported each stacked batch; fails the ones of ``fail_size``."""

    def __init__(self, fail_size: int | None = None) -> None:
        super().__init__()
        self.threads: list[str] = []
        self.fail_size = fail_size

    def batch_stacked(self, size: int, stack_s: float) -> None:
        self.threads.append(threading.current_thread().name)
        if size == self.fail_size:
            raise MemoryError("no room for this batch")
        super().batch_stacked(size, stack_s)


def test_large_batches_are_stacked_in_the_stacking_thread(monkeypatch: Any) -> None:
    """A batch above ``INLINE_STACK_BYTES`` is stacked off the loop, and the stacking thread
    queues it for the engine itself: every window still gets its own result."""
    monkeypatch.setattr("service.core.batcher.INLINE_STACK_BYTES", 0)
    obs = ThreadObserver()
    rng = np.random.default_rng(1)
    run(
        random_requests(rng), Engine(), max_batch=3, max_delay_s=0.001, max_queue=1000, observer=obs
    )
    stacked_off_loop = [name for name in obs.threads if name.startswith("stack-")]
    assert stacked_off_loop and len(obs.stacked) == len(obs.done)


def test_a_batch_cut_while_the_engine_threads_are_idle_is_stacked_by_one_of_them(
    monkeypatch: Any,
) -> None:
    """Nothing runs for its stacking to overlap with: the engine thread stacks it before its
    run (one thread hand-off fewer). One cut while that batch runs goes to the stacking
    thread, and waits stacked."""
    monkeypatch.setattr("service.core.batcher.INLINE_STACK_BYTES", 0)
    obs, engine = ThreadObserver(), Engine(gated=True)

    async def main(b: Batcher) -> None:
        first = asyncio.create_task(b.submit(windows(0, 2), far()))
        await until(lambda: len(engine.batches) == 1, "the first batch running")
        second = asyncio.create_task(b.submit(windows(10, 2), far()))
        await until(lambda: len(obs.threads) == 2, "the second batch stacked")
        engine.allow(2)
        assert values(await first) == [0, 1]
        assert values(await second) == [10, 11]

    run(main, engine, max_batch=2, max_delay_s=0.001, max_queue=100, observer=obs)
    assert [name.split("-")[0] for name in obs.threads] == ["infer", "stack"]
    assert obs.done == [2, 2]


def test_a_batch_that_fails_to_stack_fails_its_requests_and_the_batcher_goes_on(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr("service.core.batcher.INLINE_STACK_BYTES", 0)
    obs = ThreadObserver(fail_size=3)

    async def main(b: Batcher) -> None:
        with pytest.raises(MemoryError, match="no room"):
            async with asyncio.timeout(10):  # not a hang: the failure reaches the request
                await b.submit(windows(0, 3), far())
        assert values(await b.submit(windows(10, 2), far())) == [10, 11]
        assert values(await b.submit(windows(20, 1), far())) == [20]  # a view, on the loop

    run(main, Engine(), max_batch=3, max_delay_s=0.001, max_queue=100, observer=obs)
    assert obs.done == [2, 1]
