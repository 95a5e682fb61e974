"""The dynamic batcher on its own: a real (numpy) inference function, no HTTP."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.core.batcher import Batcher, BatcherStopped, DeadlineExceeded, QueueFull


class Recorder:
    """infer(): doubles the input's first column; records each batch and its thread."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[int] = []
        self.lengths: list[int] = []
        self.threads: set[int] = set()
        self.delay = delay

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(batch.shape[0])
        self.lengths.append(batch.shape[1])
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        return {"clipwise": batch[:, :1] * 2}


def far() -> float:
    return time.monotonic() + 60


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_batches_fill_up_and_results_come_back_in_order() -> None:
    rec = Recorder()

    async def main() -> None:
        b = Batcher(rec, max_batch=4, max_delay_s=0.05, max_queue=100)
        b.start()
        jobs = [b.submit([np.full(8, i, np.float32), np.full(8, -i, np.float32)], far())
                for i in range(5)]
        results = await asyncio.gather(*jobs)
        for i, res in enumerate(results):
            assert [r.outputs["clipwise"][0] for r in res] == [2 * i, -2 * i]
            assert all(r.batch_size in rec.batches for r in res)
        await b.stop()

    run(main())
    assert sum(rec.batches) == 10 and max(rec.batches) == 4
    assert threading.get_ident() not in rec.threads  # never on the event loop's thread


def test_only_windows_of_the_same_length_share_a_batch() -> None:
    rec = Recorder()

    async def main() -> None:
        b = Batcher(rec, max_batch=8, max_delay_s=0.02, max_queue=100)
        b.start()
        await asyncio.gather(b.submit([np.zeros(8, np.float32)] * 3, far()),
                             b.submit([np.zeros(5, np.float32)] * 2, far()))
        await b.stop()

    run(main())
    assert sorted(zip(rec.lengths, rec.batches, strict=True)) == [(5, 2), (8, 3)]


def test_a_lone_window_waits_at_most_about_max_delay() -> None:
    async def main() -> float:
        b = Batcher(Recorder(), max_batch=64, max_delay_s=0.05, max_queue=100)
        b.start()
        res = await b.submit([np.zeros(4, np.float32)], far())
        await b.stop()
        return res[0].queue_s

    assert 0.04 <= run(main()) < 0.5


def test_queue_full_raises_with_retry_after() -> None:
    async def main() -> None:
        b = Batcher(Recorder(delay=0.3), max_batch=1, max_delay_s=0, max_queue=3)
        b.start()
        first = asyncio.create_task(b.submit([np.zeros(4, np.float32)] * 3, far()))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as info:
            await b.submit([np.zeros(4, np.float32)] * 2, far())
        assert info.value.retry_after_s >= 1
        await first
        await b.stop()

    run(main())


def test_deadline_passed_in_the_queue_fails_without_running() -> None:
    rec = Recorder(delay=0.3)

    async def main() -> None:
        b = Batcher(rec, max_batch=1, max_delay_s=0, max_queue=10)
        b.start()
        busy = asyncio.create_task(b.submit([np.zeros(4, np.float32)], far()))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await b.submit([np.zeros(4, np.float32)] * 2, time.monotonic() + 0.1)
        await busy
        await b.stop()
        assert b.depth == 0

    run(main())
    assert sum(rec.batches) == 1


def test_cancelled_request_drops_its_queued_windows() -> None:
    rec = Recorder(delay=0.2)
    dropped: list[tuple[str, int]] = []

    class Obs:
        def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None: ...
        def depth_changed(self, depth: int) -> None: ...
        def dropped(self, reason: str, count: int) -> None:
            dropped.append((reason, count))

    async def main() -> None:
        b = Batcher(rec, max_batch=1, max_delay_s=0, max_queue=100, observer=Obs())
        b.start()
        busy = asyncio.create_task(b.submit([np.zeros(4, np.float32)], far()))
        await asyncio.sleep(0.05)
        doomed = asyncio.create_task(b.submit([np.zeros(4, np.float32)] * 5, far()))
        await asyncio.sleep(0.05)
        doomed.cancel()
        await busy
        await b.stop()

    run(main())
    assert sum(rec.batches) == 1 and dropped == [("cancelled", 5)]


def test_stop_drains_every_accepted_window_then_refuses_new_work() -> None:
    rec = Recorder(delay=0.05)

    async def main() -> None:
        b = Batcher(rec, max_batch=2, max_delay_s=1.0, max_queue=100)
        b.start()
        jobs = [asyncio.create_task(b.submit([np.zeros(4, np.float32)] * 3, far()))
                for _ in range(3)]
        await asyncio.sleep(0.01)
        await b.stop()  # returns once every accepted window has run
        results = await asyncio.wait_for(asyncio.gather(*jobs), 1)
        assert [len(r) for r in results] == [3, 3, 3]
        with pytest.raises(BatcherStopped):
            await b.submit([np.zeros(4, np.float32)], far())

    run(main())
    assert sum(rec.batches) == 9


def test_an_inference_error_fails_only_that_batch() -> None:
    def infer(batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.shape[1] == 3:
            raise RuntimeError("engine failure")
        return {"clipwise": batch[:, :1]}

    async def main() -> None:
        b = Batcher(infer, max_batch=4, max_delay_s=0.01, max_queue=100)
        b.start()
        with pytest.raises(RuntimeError, match="engine failure"):
            await b.submit([np.zeros(3, np.float32)], far())
        assert len(await b.submit([np.zeros(4, np.float32)], far())) == 1
        await b.stop()

    run(main())
