"""Dynamic batcher: windows from all requests share batches run by one inference thread.

Knows no HTTP and no ONNX Runtime: it is given ``infer(batch) -> {kind: array}``. A batch is
cut when a same-length group holds ``max_batch`` windows or its oldest window has waited
``max_delay_s``; only windows of the same length share a batch. Inference runs in a worker
thread, results come back through asyncio futures. Windows of a cancelled request that have
not started are dropped; windows past their deadline fail with ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger("service.core.batcher")

InferFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class QueueFull(Exception):
    """The queue cannot take the request's windows now; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """A window's deadline passed before its batch started."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new work."""


class BatchObserver(Protocol):
    def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None: ...
    def depth_changed(self, depth: int) -> None: ...
    def dropped(self, reason: str, count: int) -> None: ...


@dataclass(frozen=True)
class WindowResult:
    outputs: dict[str, np.ndarray]  # kind -> this window's row of the batch output
    queue_s: float
    compute_s: float
    batch_size: int
    batch_id: int


@dataclass(eq=False)
class _Item:
    samples: np.ndarray
    future: asyncio.Future[WindowResult]
    enqueued: float
    deadline: float
    queued: bool = True


class Batcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        name: str = "model",
    ) -> None:
        self.infer, self.max_batch, self.max_delay_s = infer, max_batch, max_delay_s
        self.max_queue, self.observer, self.name = max_queue, observer, name
        self._groups: dict[int, deque[_Item]] = {}
        self._depth = 0
        self._closing = False
        self._batches = 0
        self._avg_compute_s = 0.0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")

    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Refuse new work, finish every queued window, then stop the worker thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def retry_after(self) -> int:
        batches = math.ceil(self._depth / self.max_batch)
        return max(1, math.ceil(batches * max(self._avg_compute_s, 0.01)))

    async def submit(self, windows: list[np.ndarray], deadline: float) -> list[WindowResult]:
        """Queue windows (all or none) and wait for their results, in order."""
        if self._closing or self._wakeup is None:
            raise BatcherStopped("the service is shutting down")
        if self._depth and self._depth + len(windows) > self.max_queue:
            raise QueueFull(self.retry_after())
        loop, now = asyncio.get_running_loop(), time.monotonic()
        items = [_Item(w, loop.create_future(), now, deadline) for w in windows]
        for item in items:
            self._groups.setdefault(item.samples.shape[0], deque()).append(item)
        self._set_depth(self._depth + len(items))
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except asyncio.CancelledError:
            self._discard(items, "cancelled")
            raise
        except Exception:
            self._discard(items, "failed")
            raise

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if self.observer:
            self.observer.depth_changed(depth)

    def _discard(self, items: list[_Item], reason: str) -> None:
        removed = 0
        for item in items:
            if item.queued:
                self._groups[item.samples.shape[0]].remove(item)
                item.queued = False
                removed += 1
            if not item.future.done():
                item.future.cancel()
        if removed:
            self._set_depth(self._depth - removed)
            if self.observer:
                self.observer.dropped(reason, removed)

    def _expire(self, now: float) -> None:
        expired = [i for g in self._groups.values() for i in g if i.deadline <= now]
        for item in expired:
            if not item.future.done():
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
        if expired:
            self._discard(expired, "deadline")

    def _pick(self, now: float) -> tuple[deque[_Item] | None, float]:
        """The group to cut now (full, or oldest head past the delay), or how long to wait."""
        heads = [(g[0].enqueued, g) for g in self._groups.values() if g]
        if not heads:
            return None, math.inf
        full = [h for h in heads if len(h[1]) >= self.max_batch]
        oldest, group = min(full or heads, key=lambda h: h[0])
        wait = oldest + self.max_delay_s - now
        if full or wait <= 0 or self._closing:
            return group, 0.0
        return None, wait

    async def _next_batch(self) -> list[_Item] | None:
        assert self._wakeup is not None
        while True:
            now = time.monotonic()
            self._expire(now)
            group, wait = self._pick(now)
            if group is not None:
                batch = [group.popleft() for _ in range(min(self.max_batch, len(group)))]
                for item in batch:
                    item.queued = False
                self._set_depth(self._depth - len(batch))
                return batch
            if self._closing:
                return None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), None if wait == math.inf else wait)

    async def _loop(self) -> None:
        while (batch := await self._next_batch()) is not None:
            await self._run(batch)

    def _stack_and_infer(self, batch: list[_Item]) -> dict[str, np.ndarray]:
        return self.infer(np.stack([item.samples for item in batch]))

    async def _run(self, batch: list[_Item]) -> None:
        loop, start = asyncio.get_running_loop(), time.monotonic()
        waits = [start - item.enqueued for item in batch]
        try:
            outputs = await loop.run_in_executor(self._executor, self._stack_and_infer, batch)
        except Exception as exc:  # the engine failed: every window of the batch fails with it
            log.exception("inference failed for a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        compute = time.monotonic() - start
        self._batches += 1
        self._avg_compute_s = 0.8 * self._avg_compute_s + 0.2 * compute
        for row, item in enumerate(batch):
            if not item.future.done():
                rows = {kind: out[row] for kind, out in outputs.items()}
                item.future.set_result(
                    WindowResult(rows, waits[row], compute, len(batch), self._batches)
                )
        if self.observer:
            self.observer.batch_done(len(batch), compute, waits)
